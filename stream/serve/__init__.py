"""The HTTP detection API (`snowtrap serve`): the worker's batch logic behind Starlette."""
