"""The IEEE 1888 services the hub holds: point registry, value store, forwarding queue."""

from __future__ import annotations

from hub.config import Ieee1888Section
from hub.db import Database
from hub.services.alerts import AlertService
from hub.services.collection import CollectionService
from hub.services.fiap_outbox import OutboxService
from hub.services.fiap_store import FiapStore
from hub.services.points import PointService


class FiapServices:
    """One object on the hub (``hub.fiap``) so the edges reach all three through one name."""

    def __init__(self, db: Database, settings: Ieee1888Section, alerts: AlertService,
                 collection: CollectionService) -> None:
        self.settings = settings
        self.points = PointService(db)
        self.store = FiapStore(db, self.points, alerts, collection.ingest_reads, settings)
        self.outbox = OutboxService(db)
