-- Bot configuration and heartbeats (seed 004). PostgreSQL is the truth; the Redis keys
-- `bot:trade_config:{id}`, `bot:strategy_config:{id}:{sid}` and `server:heartbeat:{id}` are
-- published from these rows after commit and can always be rebuilt from them.
--
-- Versions are bumped by triggers, so every writer (the API, the CLI, a job, psql) bumps them
-- in the same transaction as the change, and a version can never go down.

CREATE TABLE bot_strategies (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    strategy_class  TEXT NOT NULL CHECK (strategy_class ~ '^[A-Za-z_][A-Za-z0-9_]{0,99}$'),
    is_pair_trading BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE trading_accounts
    -- What the server wants of the bot, or DOWN when its heartbeat stopped.
    ADD COLUMN bot_status TEXT NOT NULL DEFAULT 'ACTIVE'
        CHECK (bot_status IN ('ACTIVE', 'PAUSED', 'DOWN')),
    -- While DOWN: the status to return to on the next heartbeat.
    ADD COLUMN status_before_down TEXT CHECK (status_before_down IN ('ACTIVE', 'PAUSED')),
    ADD COLUMN bot_down_at TIMESTAMPTZ,
    ADD COLUMN last_seen_at TIMESTAMPTZ,
    ADD COLUMN account_status TEXT NOT NULL DEFAULT 'ACTIVE'
        CHECK (account_status IN ('ACTIVE', 'INACTIVE')),
    ADD COLUMN subscription_status TEXT NOT NULL DEFAULT 'ACTIVE'
        CHECK (subscription_status IN ('ACTIVE', 'EXPIRED', 'CANCELLED')),
    ADD COLUMN subscription_expiry TIMESTAMPTZ,
    -- As reported by the bot's heartbeat; peak is the high-water mark of the balance.
    ADD COLUMN current_balance NUMERIC NOT NULL DEFAULT 0,
    ADD COLUMN peak_balance NUMERIC NOT NULL DEFAULT 0,
    ADD COLUMN equity NUMERIC,
    -- Daily drawdown reference: the balance at the first heartbeat of the UTC day.
    ADD COLUMN day_ref_balance NUMERIC,
    ADD COLUMN day_ref_date DATE,
    ADD COLUMN dd_blocked BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN dd_block_reason TEXT,
    -- daily: lifts at the next UTC day; max: lifts only by an admin.
    ADD COLUMN dd_block_kind TEXT CHECK (dd_block_kind IN ('daily', 'max')),
    -- Emergency stop: the bot is paused and cannot be resumed until an admin clears it.
    ADD COLUMN emergency_stop BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN dd_protection_enabled BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN daily_dd_limit_percent NUMERIC NOT NULL DEFAULT 5.0
        CHECK (daily_dd_limit_percent > 0 AND daily_dd_limit_percent <= 100),
    ADD COLUMN max_account_dd_percent NUMERIC NOT NULL DEFAULT 10.0
        CHECK (max_account_dd_percent > 0 AND max_account_dd_percent <= 100),
    ADD COLUMN enabled_symbols TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN lot_size NUMERIC NOT NULL DEFAULT 0.01 CHECK (lot_size > 0),
    ADD COLUMN auto_pause_on_news BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN dynamic_position_sizing_enabled BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN active_bot_id BIGINT REFERENCES bot_strategies (id),
    ADD COLUMN trade_config_version BIGINT NOT NULL DEFAULT 1 CHECK (trade_config_version > 0),
    ADD CONSTRAINT trading_accounts_down_fields CHECK (
        (bot_status = 'DOWN') = (status_before_down IS NOT NULL)),
    ADD CONSTRAINT trading_accounts_dd_fields CHECK (
        dd_blocked = (dd_block_kind IS NOT NULL)),
    ADD CONSTRAINT trading_accounts_emergency_paused CHECK (
        NOT emergency_stop OR bot_status = 'PAUSED'
        OR (bot_status = 'DOWN' AND status_before_down = 'PAUSED'));

-- Live accounts are the ones the heartbeat job and the key refresher visit.
CREATE INDEX trading_accounts_live ON trading_accounts (id) WHERE account_status = 'ACTIVE';

CREATE TABLE account_strategies (
    account_id             BIGINT NOT NULL REFERENCES trading_accounts (id),
    strategy_id            BIGINT NOT NULL REFERENCES bot_strategies (id),
    status                 TEXT NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'PAUSED')),
    allowed_symbols        TEXT[] NOT NULL DEFAULT '{}',
    parameters_by_symbol   JSONB NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(parameters_by_symbol) = 'object'),
    optimization_config    JSONB NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(optimization_config) = 'object'),
    last_optimization_date TIMESTAMPTZ,
    version                BIGINT NOT NULL DEFAULT 1 CHECK (version > 0),
    PRIMARY KEY (account_id, strategy_id)
);

-- Changes committed but not yet published to Redis. Written by the version triggers in the
-- changing transaction; drained (published, then deleted) after commit by the writer and by a
-- scheduled job, so a crash between commit and publish is repaired, not lost.
CREATE TABLE bot_config_outbox (
    id          BIGSERIAL PRIMARY KEY,
    account_id  BIGINT NOT NULL,
    strategy_id BIGINT,
    kind        TEXT NOT NULL CHECK (kind IN ('trade_config', 'strategy_config')),
    version     BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION bump_trade_config_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.trade_config_version := 1;
    ELSIF (NEW.enabled_symbols, NEW.lot_size, NEW.auto_pause_on_news,
           NEW.dynamic_position_sizing_enabled, NEW.bot_status, NEW.subscription_status,
           NEW.subscription_expiry, NEW.account_status, NEW.dd_blocked, NEW.dd_block_reason,
           NEW.active_bot_id, NEW.dd_protection_enabled, NEW.daily_dd_limit_percent,
           NEW.max_account_dd_percent, NEW.emergency_stop)
          IS DISTINCT FROM
          (OLD.enabled_symbols, OLD.lot_size, OLD.auto_pause_on_news,
           OLD.dynamic_position_sizing_enabled, OLD.bot_status, OLD.subscription_status,
           OLD.subscription_expiry, OLD.account_status, OLD.dd_blocked, OLD.dd_block_reason,
           OLD.active_bot_id, OLD.dd_protection_enabled, OLD.daily_dd_limit_percent,
           OLD.max_account_dd_percent, OLD.emergency_stop)
    THEN
        NEW.trade_config_version := OLD.trade_config_version + 1;
    ELSE
        -- Nobody sets a version by hand: it only moves with a change.
        NEW.trade_config_version := OLD.trade_config_version;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.trade_config_version <> OLD.trade_config_version THEN
        INSERT INTO bot_config_outbox (account_id, kind, version)
        VALUES (NEW.id, 'trade_config', NEW.trade_config_version);
    END IF;
    RETURN NEW;
END $$;

-- (Column defaults, the BIGSERIAL id included, are applied before BEFORE triggers run.)
CREATE TRIGGER trading_accounts_version
    BEFORE INSERT OR UPDATE ON trading_accounts
    FOR EACH ROW EXECUTE FUNCTION bump_trade_config_version();

CREATE FUNCTION bump_strategy_config_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := 1;
    ELSIF (NEW.parameters_by_symbol, NEW.status, NEW.allowed_symbols, NEW.optimization_config,
           NEW.last_optimization_date)
          IS DISTINCT FROM
          (OLD.parameters_by_symbol, OLD.status, OLD.allowed_symbols, OLD.optimization_config,
           OLD.last_optimization_date)
    THEN
        NEW.version := OLD.version + 1;
    ELSE
        NEW.version := OLD.version;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO bot_config_outbox (account_id, strategy_id, kind, version)
        VALUES (NEW.account_id, NEW.strategy_id, 'strategy_config', NEW.version);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER account_strategies_version
    BEFORE INSERT OR UPDATE ON account_strategies
    FOR EACH ROW EXECUTE FUNCTION bump_strategy_config_version();

-- Wake the publishers (they LISTEN on this channel) when a change commits, whoever made it.
CREATE FUNCTION notify_bot_config_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('halol_bot_config', '');
    RETURN NULL;
END $$;

CREATE TRIGGER bot_config_outbox_notify
    AFTER INSERT ON bot_config_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_bot_config_outbox();

-- Bot API keys: `hlb_<prefix>_<secret>`; only the SHA-256 of the whole key is kept. The
-- prefix finds the row, the hash is compared in constant time. Scoped to one account.
CREATE TABLE bot_api_keys (
    id           BIGSERIAL PRIMARY KEY,
    account_id   BIGINT NOT NULL REFERENCES trading_accounts (id),
    prefix       TEXT NOT NULL UNIQUE,
    key_hash     BYTEA NOT NULL CHECK (length(key_hash) = 32),
    label        TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX bot_api_keys_account ON bot_api_keys (account_id);

-- Every admin action: who, what, when.
CREATE TABLE admin_actions (
    id     BIGSERIAL PRIMARY KEY,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target JSONB NOT NULL DEFAULT '{}',
    detail JSONB NOT NULL DEFAULT '{}',
    at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX admin_actions_at ON admin_actions (at);
