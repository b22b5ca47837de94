//! Back-office subcommands, the CLI twin of the admin API: the same operations, the same checks.
//! Results print as JSON on stdout; a refusal prints a message naming the field and exits
//! non-zero, having written nothing.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use rust_decimal::Decimal;

use crate::{
    bots,
    config::Config,
    trading::{Side, Trading, calm, ops},
};

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
    /// Show everything about an account (bot status, DD state, configs, versions).
    Show {
        /// The MT5 login.
        mt5_account_id: i64,
    },
    /// Change an account's bot, subscription, risk or trade configuration.
    Set(AccountSet),
    /// Create or change an account's settings of one strategy.
    Strategy(StrategySet),
}

/// `account set`: only the options given change.
#[derive(Debug, Args)]
pub struct AccountSet {
    /// The MT5 login.
    mt5_account_id: i64,
    /// ACTIVE or PAUSED.
    #[arg(long)]
    bot_status: Option<String>,
    /// ACTIVE or INACTIVE.
    #[arg(long)]
    account_status: Option<String>,
    /// ACTIVE, EXPIRED or CANCELLED.
    #[arg(long)]
    subscription_status: Option<String>,
    /// ISO 8601, or `none`.
    #[arg(long)]
    subscription_expiry: Option<String>,
    /// Comma-separated symbols (empty string for none).
    #[arg(long)]
    enabled_symbols: Option<String>,
    /// Lots per trade.
    #[arg(long)]
    lot_size: Option<Decimal>,
    /// true or false.
    #[arg(long)]
    auto_pause_on_news: Option<bool>,
    /// true or false.
    #[arg(long)]
    dynamic_position_sizing: Option<bool>,
    /// true or false.
    #[arg(long)]
    dd_protection: Option<bool>,
    /// Daily drawdown limit, percent.
    #[arg(long)]
    daily_dd_limit: Option<Decimal>,
    /// Max drawdown limit, percent.
    #[arg(long)]
    max_dd_limit: Option<Decimal>,
    /// Active bot strategy id, or `none`.
    #[arg(long)]
    active_bot: Option<String>,
    /// Lift a DD block (a max-DD block re-bases the peak to the current balance).
    #[arg(long)]
    clear_dd_block: bool,
    /// Who is acting (recorded in the audit log); default $USER.
    #[arg(long)]
    actor: Option<String>,
}

/// `account strategy`.
#[derive(Debug, Args)]
pub struct StrategySet {
    /// The MT5 login.
    mt5_account_id: i64,
    /// Strategy id.
    strategy_id: i64,
    /// ACTIVE or PAUSED.
    #[arg(long)]
    status: Option<String>,
    /// Comma-separated symbols.
    #[arg(long)]
    allowed_symbols: Option<String>,
    /// JSON object `{SYMBOL: {param: value}}`.
    #[arg(long)]
    parameters: Option<String>,
    /// JSON object.
    #[arg(long)]
    optimization_config: Option<String>,
    /// ISO 8601, or `none`.
    #[arg(long)]
    last_optimization_date: Option<String>,
    /// Who is acting; default $USER.
    #[arg(long)]
    actor: Option<String>,
}

/// `halol strategy ...`
#[derive(Debug, Subcommand)]
pub enum StrategyCmd {
    /// Add a bot strategy to the catalogue.
    Add {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Implementation class, e.g. TrendFollowingBot.
        #[arg(long)]
        class: String,
        /// A pair-trading strategy.
        #[arg(long)]
        pair_trading: bool,
    },
}

/// `halol bot-key ...`
#[derive(Debug, Subcommand)]
pub enum BotKeyCmd {
    /// Create an API key for an account's bot; the key is printed once.
    Create {
        /// The MT5 login.
        mt5_account_id: i64,
        /// A note (which VPS, which bot).
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a key by id.
    Revoke {
        /// Key id (from `create`).
        id: i64,
    },
}

/// `halol bots <command>`: central commands, in one transaction, audited.
#[derive(Debug, Args)]
pub struct BotsCmd {
    /// pause-all, resume-all, emergency-stop or clear-emergency.
    command: String,
    /// Only these MT5 logins (comma-separated); default all.
    #[arg(long)]
    accounts: Option<String>,
    /// Only accounts whose active bot is this strategy id.
    #[arg(long)]
    active_bot: Option<i64>,
    /// Who is acting; default $USER.
    #[arg(long)]
    actor: Option<String>,
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
    /// Strategy catalogue.
    Strategy(StrategyCmd),
    /// Bot API keys.
    BotKey(BotKeyCmd),
    /// Central bot commands.
    Bots(BotsCmd),
}

fn actor(given: Option<String>) -> String {
    let who = given
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{who}")
}

fn list(raw: Option<String>) -> Option<Vec<String>> {
    raw.map(|r| {
        r.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

fn optional_ts(flag: &str, raw: Option<String>) -> anyhow::Result<Option<Option<DateTime<Utc>>>> {
    match raw.as_deref() {
        None => Ok(None),
        Some("none" | "null") => Ok(Some(None)),
        Some(v) => Ok(Some(Some(v.parse().with_context(|| {
            format!("--{flag}: {v:?} is not an ISO 8601 time (or `none`)")
        })?))),
    }
}

fn json_object(flag: &str, raw: Option<String>) -> anyhow::Result<Option<serde_json::Value>> {
    raw.map(|r| serde_json::from_str(&r).with_context(|| format!("--{flag}: not valid JSON")))
        .transpose()
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
    let by = actor(None);
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
                &by,
            )
            .await?,
        ),
        Admin::Symbol(SymbolCmd::List) => print(crate::trading::symbols(&db).await?),
        Admin::Account(AccountCmd::Add {
            mt5_account_id,
            currency,
            balance,
        }) => print(ops::create_account(&db, mt5_account_id, &currency, balance, &by).await?),
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
                    &by,
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
            print(ops::modify_position(&t, id, levels, &by).await?)
        }
        Admin::Position(PositionCmd::Close { id }) => {
            print(ops::close_position(&t, id, &by).await?)
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
        }) => print(ops::set_price(&t, &symbol, bid, ask, timestamp, seq, &by).await?),
        Admin::Price(PriceCmd::Get { symbol }) => print(ops::get_price(&t, &symbol).await?),
        Admin::Calm(CalmCmd::On { id }) => {
            calm::enable(&t, id, &by).await?;
            print(serde_json::json!({ "position_id": id, "calm": true }))
        }
        Admin::Account(AccountCmd::Show { mt5_account_id }) => {
            print(bots::manage::account_view(&db, mt5_account_id).await?)
        }
        Admin::Account(AccountCmd::Set(a)) => {
            let active_bot = match a.active_bot.as_deref() {
                None => None,
                Some("none" | "null") => Some(None),
                Some(v) => Some(Some(v.parse().with_context(|| {
                    format!("--active-bot: {v:?} is not a strategy id (or `none`)")
                })?)),
            };
            let patch = bots::manage::AccountPatch {
                bot_status: a.bot_status,
                account_status: a.account_status,
                subscription_status: a.subscription_status,
                subscription_expiry: optional_ts("subscription-expiry", a.subscription_expiry)?,
                enabled_symbols: list(a.enabled_symbols),
                lot_size: a.lot_size,
                auto_pause_on_news: a.auto_pause_on_news,
                dynamic_position_sizing_enabled: a.dynamic_position_sizing,
                dd_protection_enabled: a.dd_protection,
                daily_dd_limit_percent: a.daily_dd_limit,
                max_account_dd_percent: a.max_dd_limit,
                active_bot_id: active_bot,
                clear_dd_block: a.clear_dd_block,
            };
            print(bots::manage::update_account(&t, a.mt5_account_id, patch, &actor(a.actor)).await?)
        }
        Admin::Account(AccountCmd::Strategy(s)) => {
            let patch = bots::manage::StrategyPatch {
                status: s.status,
                allowed_symbols: list(s.allowed_symbols),
                parameters_by_symbol: json_object("parameters", s.parameters)?,
                optimization_config: json_object("optimization-config", s.optimization_config)?,
                last_optimization_date: optional_ts(
                    "last-optimization-date",
                    s.last_optimization_date,
                )?,
            };
            print(
                bots::manage::set_account_strategy(
                    &t,
                    s.mt5_account_id,
                    s.strategy_id,
                    patch,
                    &actor(s.actor),
                )
                .await?,
            )
        }
        Admin::Strategy(StrategyCmd::Add {
            name,
            class,
            pair_trading,
        }) => print(
            bots::manage::create_strategy(&t, &name, &class, pair_trading, &actor(None)).await?,
        ),
        Admin::BotKey(BotKeyCmd::Create {
            mt5_account_id,
            label,
        }) => {
            let key = bots::apikeys::create(&db, mt5_account_id, label.as_deref()).await?;
            eprintln!("the key is shown once: store it in the bot's configuration now");
            print(key)
        }
        Admin::BotKey(BotKeyCmd::Revoke { id }) => {
            let was_active = bots::apikeys::revoke(&db, id).await?;
            print(serde_json::json!({ "id": id, "revoked": true, "was_active": was_active }))
        }
        Admin::Bots(b) => {
            let command: bots::commands::Command =
                b.command.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let accounts = list(b.accounts)
                .map(|ids| {
                    ids.iter()
                        .map(|i| {
                            i.parse::<i64>()
                                .with_context(|| format!("--accounts: {i:?} is not an MT5 login"))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
                .transpose()?;
            let filter = bots::commands::Filter {
                mt5_account_ids: accounts,
                active_bot_id: b.active_bot,
            };
            print(bots::commands::run(&t, &actor(b.actor), command, &filter).await?)
        }
        Admin::Calm(CalmCmd::Off { id }) => {
            let was = calm::disable(&t, id).await?;
            print(serde_json::json!({ "position_id": id, "calm": false, "was_calm": was }))
        }
    }
}
