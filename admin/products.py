"""Products (master data): SKU, name, GTIN. Campaigns may target products by SKU."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from admin._util import check_id, check_name
from admin.audit import AuditLog
from engine.errors import Conflict, NotFound
from engine.formats import check_gtin
from engine.store import Store, pack, unpack

__all__ = ["Product", "ProductCatalog"]


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    gtin: str | None
    created_at: float

    def to_dict(self) -> dict:
        return asdict(self)


class ProductCatalog:
    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit
        self._db = store.db("adm_products")

    def add(self, sku: str, name: str, *, gtin: str | None = None, who: str,
            now: float | None = None) -> Product:
        check_id(sku, "SKU")
        check_name(name, "product name")
        product = Product(sku, name.strip(), None if gtin is None else check_gtin(gtin).zfill(14),
                          time.time() if now is None else now)
        with self._store.write() as txn:
            if not txn.put(sku.encode(), pack(product.to_dict()), db=self._db, overwrite=False):
                raise Conflict(f"product {sku} already exists")
            self._audit.append(txn, who, "product.add", sku, product.to_dict(), now=now)
        return product

    def get(self, sku: str) -> Product:
        with self._store.read() as txn:
            raw = txn.get(str(sku).encode(), db=self._db)
        if raw is None:
            raise NotFound(f"no product {sku}; add it with `wuma product add`")
        return Product(**unpack(raw))

    def exists(self, txn, sku: str) -> bool:
        return txn.get(sku.encode(), db=self._db) is not None

    def list(self) -> list[Product]:
        with self._store.read() as txn:
            return [Product(**unpack(v)) for _, v in txn.cursor(db=self._db)]
