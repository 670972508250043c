"""The API's OpenAPI description, served at /api/schema/ (moderation/api.py)."""

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_HEX = {"type": "string", "pattern": "^[0-9a-fA-F]+$"}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "A malformed hash or request, or an image the workers' loader refuses",
        401: "No token, or an unknown or revoked one",
        403: "The token lacks the scope",
        404: "No such bank",
    }
    return {str(code): _answer(words[code], _ERROR) for code in codes}


_PHOTO_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["photo"],
                "properties": {"photo": {"type": "string", "format": "binary"}},
            }
        }
    },
}

_HASHES = {
    "type": "object",
    "properties": {
        "pdq": _HEX,
        "phash": _HEX,
        "dhash": _HEX,
        "pdq_quality": {"type": ["integer", "null"]},
    },
}

SCHEMA: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "hashguard",
        "version": "1",
        "description": (
            "Is this image banned? Compatible with the routes of Meta's Hasher-Matcher-"
            "Actioner 2.0 (OpenMediaMatch), with tokens: send 'Authorization: Bearer "
            "<token>', made with 'manage.py apitoken create NAME --scope lookup|write'."
        ),
    },
    "security": [{"token": []}],
    "components": {
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "Bank": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "matching_enabled_ratio": {"type": "number"},
                    "enabled": {"type": "boolean"},
                    "description": {"type": "string"},
                    "source": {"type": "string", "enum": ["manual", "file", "api"]},
                    "action": {"type": "string", "enum": ["quarantine", "review", "allow"]},
                    "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "fingerprints": {"type": "integer"},
                },
            },
        },
    },
    "paths": {
        "/m/lookup": {
            "get": {
                "summary": "The banned fingerprints one hash matches, by bank",
                "parameters": [
                    {
                        "name": "signal_type",
                        "in": "query",
                        "required": True,
                        "schema": {
                            "type": "string",
                            "enum": ["pdq", "phash", "dhash", "md5", "sha256"],
                        },
                    },
                    {"name": "signal", "in": "query", "required": True, "schema": _HEX},
                    {
                        "name": "banks",
                        "in": "query",
                        "description": "Only these banks, comma-separated",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _answer(
                        "Bank name to its matches; {} when nothing matches",
                        {
                            "type": "object",
                            "additionalProperties": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "bank_content_id": {"type": "integer"},
                                        "distance": {"type": "string"},
                                    },
                                },
                            },
                        },
                    ),
                    **_errors(400, 401, 403),
                },
            },
            "post": {
                "summary": "The decision a worker would make on this image; nothing is stored",
                "requestBody": _PHOTO_BODY,
                "responses": {
                    "200": _answer(
                        "The decision, the image's hashes, and each match explained",
                        {
                            "type": "object",
                            "properties": {
                                "decision": {
                                    "type": "string",
                                    "enum": ["quarantine", "review", "clean"],
                                },
                                "hashes": _HASHES,
                                "matches": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "bank": {"type": "string"},
                                            "bank_action": {"type": "string"},
                                            "bank_content_id": {"type": "integer"},
                                            "stage": {"type": "string"},
                                            "rule": {"type": "string"},
                                            "variant": {"type": "string"},
                                            "frame": {"type": "integer"},
                                            "distances": {"type": "object"},
                                            "voided": {"type": "boolean"},
                                            "explanation": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    ),
                    **_errors(400, 401, 403),
                },
            },
        },
        "/h/hash": {
            "post": {
                "summary": "The hashes of an image, as the workers compute them",
                "requestBody": _PHOTO_BODY,
                "responses": {
                    "200": _answer("PDQ, pHash, dHash and PDQ's quality", _HASHES),
                    **_errors(400, 401, 403),
                },
            }
        },
        "/c/banks": {
            "get": {
                "summary": "Every bank",
                "responses": {
                    "200": _answer(
                        "The banks",
                        {"type": "array", "items": {"$ref": "#/components/schemas/Bank"}},
                    ),
                    **_errors(401, 403),
                },
            }
        },
        "/c/bank/{name}": {
            "get": {
                "summary": "One bank",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _answer("The bank", {"$ref": "#/components/schemas/Bank"}),
                    **_errors(401, 403, 404),
                },
            }
        },
        "/c/bank/{name}/signal": {
            "post": {
                "summary": "Ban a hash in a bank (needs the write scope); audited",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "description": "One of pdq, phash, dhash, md5, sha256, "
                                "and optionally PDQ's quality",
                                "properties": {
                                    "pdq": _HEX,
                                    "phash": _HEX,
                                    "dhash": _HEX,
                                    "md5": _HEX,
                                    "sha256": _HEX,
                                    "quality": {"type": "integer", "minimum": 0, "maximum": 100},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _answer(
                        "Banned",
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "integer"},
                                "signals": {"type": "object"},
                                "created": {"type": "boolean"},
                            },
                        },
                    ),
                    "200": {"description": "The bank held this hash already"},
                    **_errors(400, 401, 403, 404),
                },
            }
        },
        "/status": {
            "get": {
                "summary": "Health: the database, the broker and the blocklist",
                "security": [],
                "responses": {
                    "200": {"description": "All are well"},
                    "503": {"description": "Something is not; 'problems' says what"},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (a token, or an address in HASHGUARD_METRICS_ALLOW)",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 403),
                },
            }
        },
        "/api/schema/": {
            "get": {
                "summary": "This description",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
    },
}
