"""Contract versioning.

``CONTRACT_VERSION`` is ``MAJOR.MINOR``. A minor bump only adds optional fields or endpoints; a major
bump breaks clients. Client and server exchange it in ``CONTRACT_VERSION_HEADER`` and refuse to talk
across a different major version rather than misread each other.
"""

CONTRACT_VERSION = "1.0"
CONTRACT_VERSION_HEADER = "X-AutoBot-Contract"
PACKAGE_VERSION = "0.1.0"


def contract_major(version: str) -> int:
    """The major part of a ``MAJOR.MINOR`` version; ``ValueError`` if it is not one."""
    major, _, minor = version.strip().partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        raise ValueError(f"not a contract version: {version!r}")
    return int(major)


def is_compatible(version: str) -> bool:
    """Whether a peer speaking ``version`` can be understood by this package."""
    try:
        return contract_major(version) == contract_major(CONTRACT_VERSION)
    except ValueError:
        return False
