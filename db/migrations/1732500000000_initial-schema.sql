-- Up Migration

CREATE TABLE accounts (
  id uuid PRIMARY KEY,
  name text NOT NULL UNIQUE,
  role text NOT NULL CHECK (role IN ('admin', 'user')),
  api_key_hash text NOT NULL UNIQUE,
  created timestamptz NOT NULL DEFAULT now(),
  removed timestamptz
);

CREATE TABLE storage_pools (
  id uuid PRIMARY KEY,
  name text NOT NULL UNIQUE,
  hypervisor text NOT NULL CHECK (hypervisor IN ('KVM', 'XenServer')),
  -- KVM: a directory under the primary root; XenServer: an SR uuid.
  path text NOT NULL,
  created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE image_stores (
  id uuid PRIMARY KEY,
  name text NOT NULL UNIQUE,
  path text NOT NULL,
  created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hosts (
  id uuid PRIMARY KEY,
  name text NOT NULL UNIQUE,
  hypervisor text NOT NULL CHECK (hypervisor IN ('KVM', 'XenServer')),
  address text NOT NULL,
  created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE service_offerings (
  id uuid PRIMARY KEY,
  name text NOT NULL UNIQUE,
  cpu_count integer NOT NULL CHECK (cpu_count > 0),
  memory_mb integer NOT NULL CHECK (memory_mb > 0),
  created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE isos (
  id uuid PRIMARY KEY,
  name text NOT NULL UNIQUE,
  os_type text NOT NULL,
  created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE virtual_machines (
  id uuid PRIMARY KEY,
  account_id uuid NOT NULL REFERENCES accounts(id),
  name text NOT NULL,
  hypervisor text NOT NULL CHECK (hypervisor IN ('KVM', 'XenServer')),
  state text NOT NULL CHECK (state IN ('Running', 'Stopped', 'Destroyed')),
  service_offering_id uuid REFERENCES service_offerings(id),
  iso_id uuid REFERENCES isos(id),
  host_id uuid REFERENCES hosts(id),
  created timestamptz NOT NULL DEFAULT now(),
  updated timestamptz NOT NULL DEFAULT now(),
  removed timestamptz
);
CREATE INDEX virtual_machines_account_idx ON virtual_machines(account_id);

CREATE TABLE volumes (
  id uuid PRIMARY KEY,
  account_id uuid NOT NULL REFERENCES accounts(id),
  vm_id uuid REFERENCES virtual_machines(id),
  name text NOT NULL,
  type text NOT NULL CHECK (type IN ('ROOT', 'DATADISK')),
  hypervisor text NOT NULL CHECK (hypervisor IN ('KVM', 'XenServer')),
  size_bytes bigint NOT NULL CHECK (size_bytes > 0),
  pool_id uuid NOT NULL REFERENCES storage_pools(id),
  path text NOT NULL,
  format text NOT NULL CHECK (format IN ('qcow2', 'vhd')),
  state text NOT NULL CHECK (state IN ('Allocated', 'Ready', 'Destroyed')),
  device_id integer,
  created timestamptz NOT NULL DEFAULT now(),
  updated timestamptz NOT NULL DEFAULT now(),
  removed timestamptz
);
CREATE INDEX volumes_account_idx ON volumes(account_id);
CREATE INDEX volumes_vm_idx ON volumes(vm_id);

CREATE TABLE snapshots (
  id uuid PRIMARY KEY,
  account_id uuid NOT NULL REFERENCES accounts(id),
  volume_id uuid NOT NULL REFERENCES volumes(id),
  -- The VM the volume was attached to when the snapshot was taken.
  vm_id uuid REFERENCES virtual_machines(id),
  volume_type text NOT NULL CHECK (volume_type IN ('ROOT', 'DATADISK')),
  name text NOT NULL,
  status text NOT NULL CHECK (status IN ('Allocated', 'Creating', 'CreatedOnPrimary', 'BackingUp', 'BackedUp',
                                         'Error', 'Destroying', 'Destroyed')),
  async_backup boolean NOT NULL,
  workflow_id text NOT NULL UNIQUE,
  idempotency_key text,
  size bigint,
  physical_size bigint,
  backup_max_attempts integer NOT NULL CHECK (backup_max_attempts > 0),
  backup_retry_interval integer NOT NULL CHECK (backup_retry_interval > 0),
  backup_attempts integer NOT NULL DEFAULT 0,
  backup_bytes_done bigint NOT NULL DEFAULT 0,
  backup_bytes_total bigint NOT NULL DEFAULT 0,
  next_attempt_at timestamptz,
  last_error text,
  created timestamptz NOT NULL DEFAULT now(),
  updated timestamptz NOT NULL DEFAULT now(),
  removed timestamptz,
  UNIQUE (account_id, idempotency_key)
);
CREATE INDEX snapshots_volume_idx ON snapshots(volume_id);
CREATE INDEX snapshots_status_idx ON snapshots(status);

CREATE TABLE snapshot_store_ref (
  id bigserial PRIMARY KEY,
  snapshot_id uuid NOT NULL REFERENCES snapshots(id),
  store_role text NOT NULL CHECK (store_role IN ('Primary', 'Image')),
  store_id uuid NOT NULL,
  install_path text NOT NULL,
  state text NOT NULL CHECK (state IN ('Allocated', 'Creating', 'Ready', 'Destroyed')),
  size bigint,
  checksum text,
  created timestamptz NOT NULL DEFAULT now(),
  last_updated timestamptz NOT NULL DEFAULT now(),
  UNIQUE (snapshot_id, store_role)
);

CREATE TABLE configuration (
  name text PRIMARY KEY,
  value text NOT NULL,
  default_value text NOT NULL,
  description text NOT NULL,
  updated timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
  id bigserial PRIMARY KEY,
  type text NOT NULL,
  level text NOT NULL CHECK (level IN ('INFO', 'WARN', 'ERROR')),
  account_id uuid,
  resource_type text NOT NULL,
  resource_id text NOT NULL,
  description text NOT NULL,
  details jsonb NOT NULL DEFAULT '{}'::jsonb,
  created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_account_idx ON events(account_id, id);
CREATE INDEX events_resource_idx ON events(resource_type, resource_id);

-- Down Migration

DROP TABLE events;
DROP TABLE configuration;
DROP TABLE snapshot_store_ref;
DROP TABLE snapshots;
DROP TABLE volumes;
DROP TABLE virtual_machines;
DROP TABLE isos;
DROP TABLE service_offerings;
DROP TABLE hosts;
DROP TABLE image_stores;
DROP TABLE storage_pools;
DROP TABLE accounts;
