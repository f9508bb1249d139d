"""An example application package for Roger: jobs (myapp.jobs) and callbacks (myapp.callbacks).

Workers import it by name (``--jobs myapp.jobs``, Partition ``spec.jobs: [myapp.jobs]``), so
it must be importable in the worker image: see examples/Dockerfile.
"""
