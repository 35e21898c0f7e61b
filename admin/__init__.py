"""Wuma's admin layer: master data, campaigns, budget pools, the reward ledger, payouts,
statistics, the admin API and page. Imports ``engine``; ``engine`` never imports it.

Start from :class:`admin.service.Admin` (one per process, over an open data folder).
"""
