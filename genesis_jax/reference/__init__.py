"""Independent implementations that tests and benchmarks compare genesis-jax against.

numpy_genesis   the Genesis deformations in numpy, one cube at a time, written from the
                spec (GUIDE.md section 3) like the original code (oracle of the
                statistical tests, baseline of benchmarks/deform_throughput.py)
torch_unet      the official UNet3D layout in PyTorch (needs torch): the other side of
                the weight import/export tests and of benchmarks/train_step.py

Importable from the installed package, so tests and benchmarks need no sys.path edits.
"""
