"""Other codebases' formats. :mod:`.diffusers`: import a diffusers ``UNet2DModel`` /
``DDPMPipeline`` folder as a ddpmlab run, export a run as one."""

from .diffusers import InteropError, export_diffusers, import_diffusers

__all__ = ["InteropError", "export_diffusers", "import_diffusers"]
