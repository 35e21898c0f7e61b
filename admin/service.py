"""The admin layer over one open data folder: every registry, wired once.

    data = DataFolder(path)
    admin = Admin(data)
    admin.pools.create("summer", total=100_000_00, who="cli:ops")
    admin.campaigns.create({...}, who="cli:ops")
    pipeline = admin.scan_pipeline()      # a ScanPipeline with the campaign hook installed

All of it lives in the data folder's LMDB environment, so a scan, its rewards, the pool
spend and the ledger entries commit in one transaction.
"""

from __future__ import annotations

import time
from functools import cached_property

from admin.audit import AuditLog
from admin.campaigns import CampaignRegistry
from admin.ledger import Ledger
from admin.pools import PoolRegistry
from admin.products import ProductCatalog
from admin.rewards import RewardEngine
from engine.aggregation import Aggregation
from engine.data import DataFolder
from engine.scan import ScanPipeline
from engine.scanlog import ScanLog

__all__ = ["Admin"]


class Admin:
    def __init__(self, data: DataFolder, *, rng=None, clock=time.time) -> None:
        self.data = data
        self._rng = rng
        self._clock = clock
        store = data.store
        self.audit = AuditLog(store)
        self.products = ProductCatalog(store, self.audit)
        self.pools = PoolRegistry(store, self.audit)
        self.campaigns = CampaignRegistry(store, self.audit, self.pools, data.spec, data.batches)
        self.ledger = Ledger(store)

    @cached_property
    def aggregation(self) -> Aggregation:
        return Aggregation(self.data)

    @cached_property
    def scans(self) -> ScanLog:
        return ScanLog(self.data.store)

    @cached_property
    def rewards(self) -> RewardEngine:
        return RewardEngine(self.data.store, self.campaigns, self.pools, self.ledger, rng=self._rng)

    def scan_pipeline(self, **options) -> ScanPipeline:
        """The scan pipeline with campaign rewards (what ``wuma serve`` runs)."""
        return ScanPipeline(self.data.codes, self.aggregation, self.scans, self.data.abuse,
                            self.data.accounts, hooks=[self.rewards], clock=self._clock, **options)

    def close(self) -> None:
        if "scans" in self.__dict__:
            self.scans.close()
