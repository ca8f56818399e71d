# SPDX-License-Identifier: GPL-3.0-or-later
"""The builder's stages, in order: acquire → prepare → compile → verify → diff → generate
→ link. Each takes and returns the typed artifacts of builder.artifacts."""
