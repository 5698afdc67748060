"""The exporter's own HTTP surface, as exporter-toolkit's web config describes it.

`config` reads `--web.config.file` and builds `WebConfig`; `tls` makes (and re-makes, on
rotation) the server's SSL context; `basic_auth` checks passwords against bcrypt hashes with
a cache; `middleware` applies auth, client-certificate SANs, rate limits and headers.
"""

from .config import WebConfig, load_web_config

__all__ = ["WebConfig", "load_web_config"]
