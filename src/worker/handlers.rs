//! One module per job: `handle(job, state)`. Handlers are idempotent: delivery is at least once.

pub mod bots;
pub mod check_sl_tp_positions;
pub mod check_sl_tp_symbol;
pub mod noop;
pub mod trim_retention;
pub mod update_position_prices;
