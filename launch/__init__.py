"""Launch tools (run from the repository root; not installed with the library).

    python -m launch.sweep configs/sweeps/X.py:mini --out DIR      a sweep, resumably
    python -m launch.tpu_vm --name VM --zone Z --workdir_root gs://... (--config F | --sweep S)
                                                                    one config / a sweep slice
    python -m launch.preflight --processes=N                        topology check on each host

See launch/README.md.
"""
