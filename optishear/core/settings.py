"""Library settings read from OPTISHEAR_* environment variables."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    return Path.home() / ".cache" / "optishear"


class LibrarySettings(BaseSettings):
    """Where assets live and where they come from."""

    model_config = SettingsConfigDict(env_prefix="OPTISHEAR_", extra="ignore")

    cache: Path = Field(default_factory=_default_cache)
    # PEP 691 JSON simple index; a private mirror can stand in for PyPI.
    pypi_url: str = "https://pypi.org/simple"
    download_timeout_s: float = 60.0
    # A folder of already-downloaded wheels, for machines without any index.
    wheelhouse: Path | None = None
