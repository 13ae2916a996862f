"""What the app's lifespan owns, created once and handed to every handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.api import EngineClient
from gateway.auth import Authenticator
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.session import RealtimeSession


@dataclass(eq=False)
class Resources:
    settings: Settings
    engine: EngineClient
    auth: Authenticator
    sessions: set[RealtimeSession] = field(default_factory=set)
    draining: bool = False
