//! Back-office subcommands, the CLI twin of the admin API: the same operations, the same checks.
//! Results print as JSON on stdout; a refusal prints a message naming the field and exits
//! non-zero, having written nothing.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use rust_decimal::Decimal;

use crate::{
    config::Config,
    trading::{Side, Trading, calm, ops},
};

const ACTOR: &str = "cli";

/// `halol symbol ...`
#[derive(Debug, Subcommand)]
pub enum SymbolCmd {
    /// Create a symbol.
    Add {
        /// Name, e.g. EURUSD.
        symbol: String,
        /// Price decimal places.
        #[arg(long)]
        digits: i16,
        /// Units per lot.
        #[arg(long)]
        contract_size: Decimal,
        /// Currency of its prices, e.g. USD.
        #[arg(long)]
        quote_currency: String,
    },
    /// List symbols.
    List,
}

/// `halol account ...`
#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create a trading account.
    Add {
        /// The MT5 login.
        mt5_account_id: i64,
        /// Account currency, e.g. USD.
        #[arg(long)]
        currency: String,
        /// Opening balance.
        #[arg(long, default_value = "0")]
        balance: Decimal,
    },
}

/// `halol position ...`
#[derive(Debug, Subcommand)]
pub enum PositionCmd {
    /// Open a position at the current market price (or at --open-price).
    Open {
        /// The account's MT5 login.
        #[arg(long)]
        account: i64,
        /// Symbol.
        #[arg(long)]
        symbol: String,
        /// buy or sell.
        #[arg(long)]
        side: String,
        /// Lots.
        #[arg(long, allow_hyphen_values = true)]
        volume: Decimal,
        /// Stop loss.
        #[arg(long)]
        sl: Option<Decimal>,
        /// Take profit.
        #[arg(long)]
        tp: Option<Decimal>,
        /// Book at this price instead of the market.
        #[arg(long)]
        open_price: Option<Decimal>,
    },
    /// Change SL and/or TP (`none` removes one).
    Modify {
        /// Position id.
        id: i64,
        /// New stop loss, or `none`.
        #[arg(long)]
        sl: Option<String>,
        /// New take profit, or `none`.
        #[arg(long)]
        tp: Option<String>,
    },
    /// Close at the current market price.
    Close {
        /// Position id.
        id: i64,
    },
    /// Show one position.
    Get {
        /// Position id.
        id: i64,
    },
    /// List positions.
    List(ListArgs),
}

/// Filters of `position list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this account's (MT5 login).
    #[arg(long)]
    account: Option<i64>,
    /// Only this symbol's.
    #[arg(long)]
    symbol: Option<String>,
    /// open or closed.
    #[arg(long)]
    status: Option<String>,
    /// Ids above this.
    #[arg(long)]
    after_id: Option<i64>,
    /// At most this many.
    #[arg(long)]
    limit: Option<i64>,
}

/// `halol price ...`
#[derive(Debug, Subcommand)]
pub enum PriceCmd {
    /// Write `price:{SYMBOL}` (TTL 10 s).
    Set {
        /// Symbol.
        symbol: String,
        /// Bid.
        #[arg(long)]
        bid: Decimal,
        /// Ask.
        #[arg(long)]
        ask: Decimal,
        /// Event time (ISO 8601); default now.
        #[arg(long)]
        timestamp: Option<DateTime<Utc>>,
        /// Sequence number; default the cached one + 1.
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Read `price:{SYMBOL}`.
    Get {
        /// Symbol.
        symbol: String,
    },
}

/// `halol calm ...`
#[derive(Debug, Subcommand)]
pub enum CalmCmd {
    /// Put a position in calm mode for an hour.
    On {
        /// Position id.
        id: i64,
    },
    /// Take a position out of calm mode.
    Off {
        /// Position id.
        id: i64,
    },
}

/// A back-office command.
#[derive(Debug)]
pub enum Admin {
    /// Symbols.
    Symbol(SymbolCmd),
    /// Accounts.
    Account(AccountCmd),
    /// Positions.
    Position(PositionCmd),
    /// Prices.
    Price(PriceCmd),
    /// Calm mode.
    Calm(CalmCmd),
}

fn level(field: &str, raw: Option<String>) -> anyhow::Result<Option<Option<Decimal>>> {
    match raw.as_deref() {
        None => Ok(None),
        Some("none" | "null") => Ok(Some(None)),
        Some(v) => Ok(Some(Some(v.parse().with_context(|| {
            format!("--{field}: {v:?} is not a decimal number (or `none`)")
        })?))),
    }
}

fn print(value: impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// Run a back-office command.
pub async fn run(config: &Config, cmd: Admin) -> anyhow::Result<()> {
    let db = crate::db::connect(&config.database_url, 2).await?;
    let redis = crate::roles::redis(config).await?;
    let t: Trading = config.trading(db.clone(), redis);
    match cmd {
        Admin::Symbol(SymbolCmd::Add {
            symbol,
            digits,
            contract_size,
            quote_currency,
        }) => print(
            ops::create_symbol(
                &db,
                ops::NewSymbol {
                    symbol,
                    digits,
                    contract_size,
                    quote_currency,
                },
            )
            .await?,
        ),
        Admin::Symbol(SymbolCmd::List) => print(crate::trading::symbols(&db).await?),
        Admin::Account(AccountCmd::Add {
            mt5_account_id,
            currency,
            balance,
        }) => print(ops::create_account(&db, mt5_account_id, &currency, balance).await?),
        Admin::Position(PositionCmd::Open {
            account,
            symbol,
            side,
            volume,
            sl,
            tp,
            open_price,
        }) => {
            let side: Side = side
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--side: {e}"))?;
            print(
                ops::open_position(
                    &t,
                    ops::OpenPosition {
                        mt5_account_id: account,
                        symbol,
                        side,
                        volume,
                        stop_loss: sl,
                        take_profit: tp,
                        open_price,
                    },
                )
                .await?,
            )
        }
        Admin::Position(PositionCmd::Modify { id, sl, tp }) => {
            let levels = ops::Levels {
                stop_loss: level("sl", sl)?,
                take_profit: level("tp", tp)?,
            };
            if levels.stop_loss.is_none() && levels.take_profit.is_none() {
                anyhow::bail!("give --sl and/or --tp (`none` removes one)");
            }
            print(ops::modify_position(&t, id, levels).await?)
        }
        Admin::Position(PositionCmd::Close { id }) => {
            print(ops::close_position(&t, id, ACTOR).await?)
        }
        Admin::Position(PositionCmd::Get { id }) => print(ops::get_position(&db, id).await?),
        Admin::Position(PositionCmd::List(a)) => print(
            ops::list_positions(
                &db,
                &ops::PositionFilter {
                    mt5_account_id: a.account,
                    symbol: a.symbol,
                    status: a.status,
                    after_id: a.after_id,
                    limit: a.limit,
                },
            )
            .await?,
        ),
        Admin::Price(PriceCmd::Set {
            symbol,
            bid,
            ask,
            timestamp,
            seq,
        }) => print(ops::set_price(&t, &symbol, bid, ask, timestamp, seq).await?),
        Admin::Price(PriceCmd::Get { symbol }) => print(ops::get_price(&t, &symbol).await?),
        Admin::Calm(CalmCmd::On { id }) => {
            calm::enable(&t, id, ACTOR).await?;
            print(serde_json::json!({ "position_id": id, "calm": true }))
        }
        Admin::Calm(CalmCmd::Off { id }) => {
            let was = calm::disable(&t, id).await?;
            print(serde_json::json!({ "position_id": id, "calm": false, "was_calm": was }))
        }
    }
}
