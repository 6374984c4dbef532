"""The site model as JSON Schema, so editors can complete and check site files."""

from __future__ import annotations

from typing import Any

from cidemo_infra.site.model import Site


def site_json_schema() -> dict[str, Any]:
    schema = Site.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cidemo site file"
    return schema
