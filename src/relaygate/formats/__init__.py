"""Front-door formats (SPEC §7a): one module per door, each a `Door` of formats/base.py."""
