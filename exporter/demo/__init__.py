"""`--demo`: a simulated Entra ID and Graph on loopback, and tenants that show every state.

Imported only when `--demo` is given (and by the tests and the benchmark): a normal start never
loads the simulator or its test CA.
"""

from .tenants import demo_config, start_demo_cloud

__all__ = ["demo_config", "start_demo_cloud"]
