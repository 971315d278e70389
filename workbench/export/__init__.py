"""`wb export`: a stage's verified compile-time configurations as an installable torch op.

    build.py      export_stage: plan the configurations, check the runs that verified them,
                  compile each for export (TVM-FFI, no GPU), link lib/<id>.so, write the package
    verified.py   the passing GPU runs of runs/ on the current sources, per configuration
    exported.py   wb run --exported: an export's manifest (CLI), its op in the worker, bit differences
    package/      what every exported package holds besides its objects: the runtime
                  (__init__.py: manifest, refusal, the torch.library op + its fake) and pyproject.toml

What is kernel-specific (the op's name, schema, argument checks, fake outputs, launch) comes
from the stage's ``export`` (workbench.kernels.stage.ExportSpec). docs/export.md.
"""
