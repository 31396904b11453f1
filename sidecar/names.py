"""Every collection and index name the sidecar uses, once.

Collections (DESIGN §3) are named by their logical name; the manifests' real
collection is a setting (``SIDECAR_FILES_COLLECTION``), so ``FILES`` is only the
logical name ``Store`` maps to it. The index names are Mentorix's own Mongo
store's (``ux_``/``ix_``), so whichever side creates an index first, the other's
create is a no-op (``sidecar/indexes.py``).
"""

from __future__ import annotations

# --- collections ---------------------------------------------------------------
HUBS = "memory_hubs"  # one document per hub entry, _id "<hub_type>/<item_key>"
SNAPSHOTS = "runtime_snapshots"  # one document per distinct snapshot, _id = content hash
EPISODES = "episodic_memory"  # one document per run, _id = run_id
EVENTS = "memory_events"
TOMBSTONES = "memory_tombstones"  # one per removed document (or replaced GridFS blob)
META = "memory_sidecar_meta"  # the writer lease (sidecar/lease.py)
FILES = "files"  # logical name; the real collection name is a setting

# --- indexes -----------------------------------------------------------------------
IX_HUB_TYPE_ITEM_KEY = "ux_hub_type_item_key"
IX_HUBS_LEARNER_ID = "ix_hubs_learner_id"
IX_SNAPSHOTS_TIMESTAMP = "ix_snapshots_timestamp_desc"
IX_EPISODES_RUN_ID = "ux_episodes_run_id"
IX_EPISODES_UPDATED_AT = "ix_episodes_updated_at_desc"
IX_EVENTS_ENTITY_KEY = "ix_events_entity_key"
IX_EVENTS_CREATED_AT = "ix_events_created_at_desc"
IX_FILES_KIND = "ix_files_kind"
IX_TOMBSTONES_EXPIRE_AT_TTL = "ix_tombstones_expire_at_ttl"
IX_TOMBSTONES_COLL_DOC_ID = "ix_tombstones_coll_doc_id"
IX_TOMBSTONES_DELETED_AT = "ix_tombstones_deleted_at_desc"
# The TTL indexes a setting turns on (> 0 days) and off (0: dropped).
IX_SNAPSHOTS_TTL = "ix_snapshots_timestamp_dt_ttl"
IX_EPISODES_TTL = "ix_episodes_updated_at_dt_ttl"
IX_EVENTS_TTL = "ix_events_created_at_ttl"
