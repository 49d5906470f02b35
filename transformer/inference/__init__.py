"""A trained run put to use: loading it, generating text, inspecting its attention, ablating its
heads, and converting checkpoints of other libraries into runs."""
