"""The canonical model (SQLModel tables). Importing this package registers every table."""

from hub.model.access import AccessLog, ApiClient, DeliveryGroup, PortalSession
from hub.model.adr import AdrAction, AdrEvent, AdrPolicy
from hub.model.adr_reservations import AdrReservation
from hub.model.base import CommsSettings
from hub.model.catalog import (
    ConcentratorType,
    LogicalDeviceType,
    ParameterGroup,
    ParameterGroupItem,
    PhysicalDeviceType,
)
from hub.model.collection import CollectionLog, CollectionRun
from hub.model.controls import ControlAction, ControlJob
from hub.model.fiap import FiapOutbox, FiapPoint, FiapValue
from hub.model.message_outbox import MessageOutbox
from hub.model.message_receipts import MessageReceipt
from hub.model.customers import (
    Cluster,
    CorrectionParameter,
    Customer,
    CustomerLogicalDevice,
    DisplayTerminal,
    PortalAccount,
)
from hub.model.history import Alert, Certificate, QuoteHistory, UsageHistory
from hub.model.usage_rollup import UsageRollup, UsageRollupSlot, UsageRollupStale, UsageRollupState
from hub.model.usage_versions import UsageVersion
from hub.model.topology import (
    Concentrator,
    ConcentratorComms,
    HeadEnd,
    LogicalDevice,
    PhysicalDevice,
    PhysicalDeviceComms,
)
from sqlmodel import SQLModel

metadata = SQLModel.metadata

__all__ = [
    "AccessLog", "ApiClient", "DeliveryGroup", "PortalSession",
    "AdrAction", "AdrEvent", "AdrPolicy", "AdrReservation", "Alert", "Certificate", "Cluster", "CollectionLog",
    "CollectionRun", "CommsSettings", "ControlAction", "ControlJob",
    "Concentrator", "ConcentratorComms", "ConcentratorType", "CorrectionParameter", "Customer",
    "CustomerLogicalDevice", "DisplayTerminal", "FiapOutbox", "FiapPoint", "FiapValue", "HeadEnd", "LogicalDevice", "LogicalDeviceType",
    "MessageOutbox", "MessageReceipt", "ParameterGroup", "ParameterGroupItem", "PhysicalDevice", "PhysicalDeviceComms",
    "PhysicalDeviceType", "PortalAccount", "QuoteHistory", "UsageHistory", "UsageRollup", "UsageRollupSlot", "UsageRollupStale",
    "UsageRollupState", "UsageVersion", "metadata",
]
