//! Integration tests against the real Redis (and PostgreSQL where a role needs it). Every test
//! owns its Redis key prefix; tests that kill Redis start their own `redis-server`.

mod bots;
mod helpers;
mod metrics;
mod processes;
mod queue;
mod simulator;
mod trading;
mod trading_api;
mod web;
