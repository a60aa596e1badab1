"""The running hub: settings, store and services, plus a worker pool for blocking database work.

Edges hold a :class:`Hub` and call services through :meth:`Hub.run`; they never open sessions.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

from hub import __version__
from hub.config import Settings
from hub.db import Database
from hub.delivery_schedule import DeliveryScheduler
from hub.headends import HeadEndFactory, HeadEnds
from hub.scheduler import CollectionScheduler
from hub.services.admin import AdminService
from hub.services.adr import AdrService
from hub.services.alerts import AlertService
from hub.services.billing import BillingService
from hub.services.certificates import CertificateService
from hub.services.cim_readings import CimReadService
from hub.services.message_outbox import MessageOutboxService
from hub.services.message_receipts import MessageReceiptService
from hub.services.collection import CollectionService
from hub.services.diagnosis import Thresholds
from hub.services.concentrators import ConcentratorService
from hub.services.fiap_services import FiapServices
from hub.services.controls import ControlService
from hub.services.installation import InstallationService
from hub.services.jobs import RebootJobs
from hub.services.provisioning import ProvisioningService
from hub.services.registry import RegistryService
from hub.services.search import SearchService
from hub.services.units import UnitService
from hub.services.usage import UsageService
from hub.services.access import AccessService
from hub.services.dashboard import DashboardService
from hub.services.delivery import DeliveryService
from hub.services.portal import PortalService
from hub.services.public import PublicDataService
from hub.services.public_sensors import PublicSensorService
from hub.throttle import ThrottleLimits

T = TypeVar("T")


class Hub:
    """Everything the edges may use. One per process."""

    version = __version__

    def __init__(self, settings: Settings, db: Database | None = None,
                 head_end_factory: HeadEndFactory | None = None) -> None:
        self.settings = settings
        self.db = db or Database.from_url(settings.database_url, pool_size=settings.database.pool_size,
                                          echo=settings.database.echo)
        self.admin = AdminService(self.db)
        self.registry = RegistryService(self.db, settings.registry)
        self.installation = InstallationService(self.db)
        self.provisioning = ProvisioningService(self.db)
        self.certificates = CertificateService(self.db)
        self.search = SearchService(self.db)
        self.units = UnitService(self.db)
        self.concentrators = ConcentratorService(self.db, settings.registry)
        self.billing = BillingService(self.db, settings.billing, settings.billing_dir, settings.estimation)
        self.alerts = AlertService(self.db)  # the NMS notifier is wired by the composition root
        # head-ends are reached through the factory the composition root injects (None: no collection)
        self.head_ends = HeadEnds(self.db, head_end_factory, batch_size=settings.collection.batch_size,
                                  timeout_s=settings.collection.request_timeout_s,
                                  limits=ThrottleLimits.from_section(settings.throttle))
        self.collection = CollectionService(self.db, settings.collection, self.head_ends, self.run, alerts=self.alerts,
                                            thresholds=Thresholds.from_section(settings.alerts))
        self.usage = UsageService(self.db, settings.estimation)
        self.fiap = FiapServices(self.db, settings.ieee1888, self.alerts, self.collection)  # IEEE 1888
        self.access = AccessService(self.db, settings.access)  # one caller resolution for every edge
        self.public = PublicDataService(self.db, settings.privacy)
        self.public_sensors = PublicSensorService(self.db, settings.privacy, self.public._visible_clusters)
        self.portal = PortalService(self.db, self.access, self.public)
        self.delivery = DeliveryService(self.db, settings.delivery, settings.privacy, settings.data.dir)
        self.delivery_schedule = DeliveryScheduler(self.delivery, self.run,
                                                   run_at_minutes=settings.delivery.run_at_minutes)
        self.dashboard = DashboardService(self.db, settings.privacy.timezone, clock=lambda: self.collection.clock(),
                                          rollup=self.public.rollup)
        self.cim_reads = CimReadService(self.db)  # many metering points at once, for the 61968-9 edge
        self.outbox = MessageOutboxService(self.db)  # messages edges publish, kept until acknowledged
        self.receipts = MessageReceiptService(  # messages edges took in, with the reply given (replay)
            self.db, retention=timedelta(hours=settings.cim.replay_retention_hours))
        self.adr = AdrService(self.db, self.head_ends, self.run, settings.openadr)
        self.controls = ControlService(self.db, self.head_ends, self.run)
        self.reboot_jobs = RebootJobs(self.db, settings.controls, self.search, self.controls, self.run, self.alerts)
        self.scheduler = CollectionScheduler(
            self.collection, self.head_ends.he_ids, interval=timedelta(minutes=settings.collection.interval_minutes),
            recollect_every=timedelta(minutes=settings.collection.recollect_every_minutes),
            tick_delay=timedelta(seconds=settings.collection.tick_delay_s),
            after_cycle=self.public.rollup.refresh_stale)  # the cycle's slot is rolled up before anyone asks
        self._pool = ThreadPoolExecutor(max_workers=settings.database.pool_size, thread_name_prefix="hub-db")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking service code off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.db.dispose()
