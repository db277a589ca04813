"""Kubernetes type knowledge, built from the upstream generated.proto files (see build.py).

What the API server needs from the types: protobuf request bodies decoded to JSON, patches
applied (strategic merge, JSON merge, JSON patch), unknown fields found for strict field
validation, and the OpenAPI v3 documents kubectl downloads. types.json is loaded once, on
first use.
"""

from knetlab.kube.schema.openapi import openapi_v3, openapi_v3_index
from knetlab.kube.schema.patch import json_merge, json_patch, strategic_merge
from knetlab.kube.schema.protobuf import decode_protobuf
from knetlab.kube.schema.validate import unknown_fields

__all__ = ["decode_protobuf", "json_merge", "json_patch", "openapi_v3", "openapi_v3_index",
           "strategic_merge", "unknown_fields"]
