-- Trading core: currencies, symbols, trading accounts, positions and the append-only record of
-- every close. PostgreSQL is the truth; Redis only caches prices and calm-mode state.
--
-- Money and prices are NUMERIC. Application code normalises prices to the symbol's digits and
-- money to the currency's digits before writing; the constraints below are the last line.

CREATE TABLE currencies (
    code   TEXT PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    -- Decimal places of an amount of money in this currency (JPY 0, USD 2).
    digits SMALLINT NOT NULL CHECK (digits BETWEEN 0 AND 8)
);

INSERT INTO currencies (code, digits) VALUES
    ('USD', 2), ('EUR', 2), ('GBP', 2), ('JPY', 0), ('CHF', 2), ('AUD', 2), ('CAD', 2),
    ('NZD', 2), ('SEK', 2), ('NOK', 2), ('SGD', 2), ('HKD', 2), ('ZAR', 2), ('MXN', 2),
    ('TRY', 2), ('PLN', 2), ('CNH', 2), ('XAU', 2), ('XAG', 2);

CREATE TABLE symbols (
    symbol         TEXT PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9][A-Z0-9._#-]{0,31}$'),
    -- Decimal places of a price (EURUSD 5, USDJPY 3).
    digits         SMALLINT NOT NULL CHECK (digits BETWEEN 0 AND 10),
    -- Units of the base per lot (100000 for FX, 100 for XAUUSD).
    contract_size  NUMERIC NOT NULL CHECK (contract_size > 0),
    -- The currency prices and PnL of this symbol are in.
    quote_currency TEXT NOT NULL REFERENCES currencies (code),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE trading_accounts (
    id             BIGSERIAL PRIMARY KEY,
    mt5_account_id BIGINT NOT NULL UNIQUE CHECK (mt5_account_id > 0),
    currency       TEXT NOT NULL REFERENCES currencies (code),
    balance        NUMERIC NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Lets positions carry the account currency with a foreign key that keeps it true.
    UNIQUE (id, currency)
);
CREATE INDEX trading_accounts_currency ON trading_accounts (currency);

CREATE TABLE positions (
    id               BIGSERIAL PRIMARY KEY,
    account_id       BIGINT NOT NULL,
    -- Copied from the account (kept true by the composite foreign key) so revaluation needs no
    -- join over a million rows.
    account_currency TEXT NOT NULL,
    symbol           TEXT NOT NULL REFERENCES symbols (symbol),
    side             TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    volume           NUMERIC NOT NULL CHECK (volume > 0),
    -- The contract size the position was opened on.
    contract_size    NUMERIC NOT NULL CHECK (contract_size > 0),
    open_price       NUMERIC NOT NULL CHECK (open_price > 0),
    opened_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    stop_loss        NUMERIC CHECK (stop_loss > 0),
    take_profit      NUMERIC CHECK (take_profit > 0),
    status           TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    closed_at        TIMESTAMPTZ,
    close_price      NUMERIC CHECK (close_price > 0),
    close_reason     TEXT CHECK (close_reason IN ('sl', 'tp', 'manual')),
    -- In the account currency; NULL with a note while the conversion price is missing.
    realised_pnl     NUMERIC,
    realised_pnl_note TEXT,
    -- Last revaluation (open positions): the quote used and the PnL it gives.
    current_bid      NUMERIC CHECK (current_bid > 0),
    current_ask      NUMERIC CHECK (current_ask > 0),
    price_ts         TIMESTAMPTZ,
    unrealised_pnl   NUMERIC,
    unrealised_pnl_note TEXT,
    revalued_at      TIMESTAMPTZ,
    FOREIGN KEY (account_id, account_currency) REFERENCES trading_accounts (id, currency),
    CONSTRAINT positions_closed_fields CHECK (
        (status = 'open' AND closed_at IS NULL AND close_price IS NULL AND close_reason IS NULL
            AND realised_pnl IS NULL)
        OR (status = 'closed' AND closed_at IS NOT NULL AND close_price IS NOT NULL
            AND close_reason IS NOT NULL)
    ),
    CONSTRAINT positions_sl_below_tp CHECK (
        stop_loss IS NULL OR take_profit IS NULL
        OR (side = 'buy' AND stop_loss < take_profit)
        OR (side = 'sell' AND stop_loss > take_profit)
    ),
    CONSTRAINT positions_quote_not_crossed CHECK (current_ask >= current_bid)
);

-- The four trigger indexes (research §1.10): a sweep is four range scans per symbol.
--   long SL hit:  stop_loss   >= bid      long TP hit:  take_profit <= bid
--   short SL hit: stop_loss   <= ask      short TP hit: take_profit >= ask
CREATE INDEX positions_open_buy_sl ON positions (symbol, stop_loss)
    WHERE status = 'open' AND side = 'buy' AND stop_loss IS NOT NULL;
CREATE INDEX positions_open_buy_tp ON positions (symbol, take_profit)
    WHERE status = 'open' AND side = 'buy' AND take_profit IS NOT NULL;
CREATE INDEX positions_open_sell_sl ON positions (symbol, stop_loss)
    WHERE status = 'open' AND side = 'sell' AND stop_loss IS NOT NULL;
CREATE INDEX positions_open_sell_tp ON positions (symbol, take_profit)
    WHERE status = 'open' AND side = 'sell' AND take_profit IS NOT NULL;
-- Revaluation, per symbol.
CREATE INDEX positions_open_symbol ON positions (symbol) WHERE status = 'open';
-- Listing by account.
CREATE INDEX positions_account ON positions (account_id, id);
-- Closes whose PnL still waits for a conversion price.
CREATE INDEX positions_unbooked ON positions (id)
    WHERE status = 'closed' AND realised_pnl IS NULL;

-- One row per close, written in the closing transaction; the primary key makes a second close
-- of the same position impossible. Append-only: the only permitted update books a PnL that was
-- waiting for a conversion price.
CREATE TABLE position_closes (
    position_id      BIGINT PRIMARY KEY REFERENCES positions (id),
    -- account, symbol and currencies are copied from the position row (itself constrained);
    -- no foreign keys of their own, which would only add checks to every close.
    account_id       BIGINT NOT NULL,
    symbol           TEXT NOT NULL,
    side             TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    volume           NUMERIC NOT NULL CHECK (volume > 0),
    open_price       NUMERIC NOT NULL CHECK (open_price > 0),
    close_price      NUMERIC NOT NULL CHECK (close_price > 0),
    reason           TEXT NOT NULL CHECK (reason IN ('sl', 'tp', 'manual')),
    -- Event time of the quote the position closed on.
    price_ts         TIMESTAMPTZ NOT NULL,
    closed_at        TIMESTAMPTZ NOT NULL,
    -- Who closed it: `sweep`, or the admin actor.
    closed_by        TEXT NOT NULL,
    -- PnL in the symbol's quote currency (always known at close).
    pnl_quote        NUMERIC NOT NULL,
    quote_currency   TEXT NOT NULL,
    account_currency TEXT NOT NULL,
    -- quote -> account rate and the PnL booked to the balance; NULL until a conversion price
    -- is known.
    conversion_rate  NUMERIC CHECK (conversion_rate > 0),
    realised_pnl     NUMERIC,
    booked_at        TIMESTAMPTZ,
    CHECK ((realised_pnl IS NULL) = (booked_at IS NULL))
);
CREATE INDEX position_closes_account ON position_closes (account_id, closed_at);

CREATE FUNCTION position_closes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'position_closes is append-only';
    END IF;
    IF OLD.booked_at IS NOT NULL
       OR (NEW.position_id, NEW.account_id, NEW.symbol, NEW.side, NEW.volume, NEW.open_price,
           NEW.close_price, NEW.reason, NEW.price_ts, NEW.closed_at, NEW.closed_by,
           NEW.pnl_quote, NEW.quote_currency, NEW.account_currency)
          IS DISTINCT FROM
          (OLD.position_id, OLD.account_id, OLD.symbol, OLD.side, OLD.volume, OLD.open_price,
           OLD.close_price, OLD.reason, OLD.price_ts, OLD.closed_at, OLD.closed_by,
           OLD.pnl_quote, OLD.quote_currency, OLD.account_currency)
    THEN
        RAISE EXCEPTION 'position_closes is append-only: only an unbooked close may be booked';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER position_closes_append_only
    BEFORE UPDATE OR DELETE ON position_closes
    FOR EACH ROW EXECUTE FUNCTION position_closes_append_only();

-- A closed position stays closed: nothing reopens it or rewrites its close.
CREATE FUNCTION positions_closed_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'closed' AND (
        NEW.status <> 'closed' OR NEW.close_price IS DISTINCT FROM OLD.close_price
        OR NEW.close_reason IS DISTINCT FROM OLD.close_reason
        OR NEW.closed_at IS DISTINCT FROM OLD.closed_at
        OR (OLD.realised_pnl IS NOT NULL AND NEW.realised_pnl IS DISTINCT FROM OLD.realised_pnl))
    THEN
        RAISE EXCEPTION 'position % is closed', OLD.id;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER positions_closed_is_final
    BEFORE UPDATE ON positions
    FOR EACH ROW WHEN (OLD.status = 'closed')
    EXECUTE FUNCTION positions_closed_is_final();
