"""The site model, its loading and validation, and its JSON Schema."""

from cidemo_infra.site.load import load_site, parse_site
from cidemo_infra.site.model import ROLES, Node, Site

__all__ = ["ROLES", "Node", "Site", "load_site", "parse_site"]
