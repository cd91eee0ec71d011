"""Interoperability with diffusers: its UNet as a lit_gen network (:mod:`lit_gen.nets.diffusers_unet`), the
map between its schedulers and lit_gen's processes (:mod:`.schedulers`), and pipeline import and export
(:mod:`.pipelines`)."""
