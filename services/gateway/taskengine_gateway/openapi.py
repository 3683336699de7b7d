"""The published HTTP contract: the OpenAPI document of every dialect, from the handlers.

`make contracts` (`python -m taskengine_gateway.openapi > contracts/openapi.json`) regenerates
the committed file; a contract test fails when the two differ, so the document cannot drift.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from typing import Any, cast

from taskengine_core.config import EngineSettings

from taskengine_gateway.app import create_app
from taskengine_gateway.state import GatewayState


def document() -> dict[str, Any]:
    """The document the gateway serves at `/schema/openapi.json`."""
    # Only the handlers shape it: an app around no engine (nothing is served or connected).
    offline = SimpleNamespace(runtime=SimpleNamespace(config=EngineSettings.model_construct()))
    return create_app(cast(GatewayState, offline)).openapi_schema.to_schema()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
