"""The caller's own key: the dashboard shows the team and offers the admin views by role."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentKey
from api.routes.admin import to_key_public
from api.schemas import KeyPublic, errors

router = APIRouter(prefix="/v1", tags=["keys"], responses=errors(401))


@router.get("/me", response_model=KeyPublic, summary="Read the caller's own key")
def read_me(key: CurrentKey) -> Any:
    """The API key making the request (name, team, role), without its secret."""
    return to_key_public(key)
