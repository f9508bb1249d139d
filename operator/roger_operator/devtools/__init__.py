"""Developer tools for the local cluster, where kwok fakes nodes and no container runs."""
