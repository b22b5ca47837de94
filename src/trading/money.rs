//! Pure decimal rules: normalisation, trigger evaluation, PnL and the calm-mode blur. No I/O, so
//! every rule is pinned by a unit test here.

use rust_decimal::{Decimal, RoundingStrategy};

use super::{CloseReason, Side};

/// The largest price (bid, ask, open price, SL, TP) accepted: far above any traded price, far
/// below where `Decimal` arithmetic on it (PnL, mids) could overflow.
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// The largest PnL booked in one close (10^24): any batch of closes (at most 10,000) can be
/// summed without overflow (`Decimal` holds up to 7.9 × 10^28).
pub const MAX_MONEY: Decimal = Decimal::from_parts(0xA100_0000, 0x1BCE_CCED, 0x0000_D3C2, false, 0);

/// A price with more decimal places than `digits` allows is refused (nautilus does the same);
/// trailing zeros are fine. Returns the price rescaled to exactly `digits` places.
pub fn normalise_price(value: Decimal, digits: u32) -> Result<Decimal, String> {
    if value <= Decimal::ZERO {
        return Err(format!("must be greater than 0, got {value}"));
    }
    if value > MAX_PRICE {
        return Err(format!("{value} is above the largest price {MAX_PRICE}"));
    }
    if value.normalize().scale() > digits {
        return Err(format!(
            "{value} has more than the symbol's {digits} decimal places"
        ));
    }
    let mut v = value;
    v.rescale(digits);
    Ok(v)
}

/// A price read from the cache (written by a feed or a bot we do not control), rounded to the
/// symbol's digits rather than refused.
pub fn round_price(value: Decimal, digits: u32) -> Decimal {
    let mut v = value.round_dp_with_strategy(digits, RoundingStrategy::MidpointNearestEven);
    v.rescale(digits);
    v
}

/// Money rounded once, at booking, half away from zero (what PostgreSQL's `round` does too).
pub fn round_money(value: Decimal, digits: u32) -> Decimal {
    let mut v = value.round_dp_with_strategy(digits, RoundingStrategy::MidpointAwayFromZero);
    v.rescale(digits);
    v
}

/// The market price a position is valued and closed at: bid for a long, ask for a short.
pub fn market_price(side: Side, bid: Decimal, ask: Decimal) -> Decimal {
    match side {
        Side::Buy => bid,
        Side::Sell => ask,
    }
}

/// Does the quote trigger the position's SL or TP? Inclusive (a touch triggers); SL wins when
/// both are crossed (only possible with an inconsistent pair, but decided here once).
pub fn trigger(
    side: Side,
    stop_loss: Option<Decimal>,
    take_profit: Option<Decimal>,
    bid: Decimal,
    ask: Decimal,
) -> Option<CloseReason> {
    let (sl_hit, tp_hit) = match side {
        Side::Buy => (
            stop_loss.is_some_and(|sl| bid <= sl),
            take_profit.is_some_and(|tp| bid >= tp),
        ),
        Side::Sell => (
            stop_loss.is_some_and(|sl| ask >= sl),
            take_profit.is_some_and(|tp| ask <= tp),
        ),
    };
    if sl_hit {
        Some(CloseReason::Sl)
    } else if tp_hit {
        Some(CloseReason::Tp)
    } else {
        None
    }
}

/// PnL in the symbol's quote currency: `(close − open) × volume × contract size` for a long,
/// `(open − close) × …` for a short. Exact (not rounded). `None` if it does not fit a `Decimal`
/// (input bounds make that impossible for data written through halol).
pub fn pnl_quote(
    side: Side,
    open: Decimal,
    close: Decimal,
    volume: Decimal,
    contract_size: Decimal,
) -> Option<Decimal> {
    let diff = match side {
        Side::Buy => close.checked_sub(open)?,
        Side::Sell => open.checked_sub(close)?,
    };
    diff.checked_mul(volume)?.checked_mul(contract_size)
}

/// A quote-currency PnL in the account currency at `rate`, rounded once to `digits`. `None` if
/// it is beyond [`MAX_MONEY`] (so a batch's sum of them can never overflow).
pub fn convert(pnl_quote: Decimal, rate: Decimal, digits: u32) -> Option<Decimal> {
    let value = pnl_quote.checked_mul(rate)?;
    (value.abs() <= MAX_MONEY).then(|| round_money(value, digits))
}

/// Are an SL and a TP in the order the schema requires: below the TP for a long, above it for a
/// short?
pub fn levels_in_order(side: Side, stop_loss: Decimal, take_profit: Decimal) -> bool {
    match side {
        Side::Buy => stop_loss < take_profit,
        Side::Sell => stop_loss > take_profit,
    }
}

/// Where an SL or TP may be set: a long's SL below the bid and TP above it; a short's SL above
/// the ask and TP below it. `Err` says why not.
pub fn check_level_side(
    side: Side,
    field: &'static str,
    level: Decimal,
    bid: Decimal,
    ask: Decimal,
) -> Result<(), String> {
    let ok = match (side, field) {
        (Side::Buy, "stop_loss") => level < bid,
        (Side::Buy, _) => level > bid,
        (Side::Sell, "stop_loss") => level > ask,
        (Side::Sell, _) => level < ask,
    };
    if ok {
        return Ok(());
    }
    let (price_name, price, relation) = match (side, field) {
        (Side::Buy, "stop_loss") => ("bid", bid, "below"),
        (Side::Buy, _) => ("bid", bid, "above"),
        (Side::Sell, "stop_loss") => ("ask", ask, "above"),
        (Side::Sell, _) => ("ask", ask, "below"),
    };
    Err(format!(
        "{level} is on the wrong side of the market: a {side} position's {field} must be {relation} the current {price_name} {price}"
    ))
}

/// The calm-mode blur of a PnL: the band `[low, high)` of width `step` that holds it, where
/// `step` is the power of ten just at or below `|pnl|`, at least 10. 123.45 → [100, 200);
/// −37.2 → [−40, −30); 3 → [0, 10); 0 → [0, 10).
pub fn blur(pnl: Decimal) -> (Decimal, Decimal) {
    let magnitude = pnl.abs();
    let mut step = Decimal::TEN;
    let limit = Decimal::from(1_000_000_000_000_i64);
    while step < limit && step * Decimal::TEN <= magnitude {
        step *= Decimal::TEN;
    }
    let low = (pnl / step).floor() * step;
    (low.normalize(), (low + step).normalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal literal")
    }

    #[test]
    fn longs_trigger_on_the_bid_and_shorts_on_the_ask_inclusively() {
        let (bid, ask) = (d("1.10000"), d("1.10020"));
        // Long: SL touched by the bid triggers; the ask touching it does not matter.
        assert_eq!(
            trigger(Side::Buy, Some(d("1.10000")), None, bid, ask),
            Some(CloseReason::Sl)
        );
        assert_eq!(trigger(Side::Buy, Some(d("1.09999")), None, bid, ask), None);
        assert_eq!(
            trigger(Side::Buy, None, Some(d("1.10000")), bid, ask),
            Some(CloseReason::Tp)
        );
        assert_eq!(trigger(Side::Buy, None, Some(d("1.10020")), bid, ask), None);
        // Short: the ask decides.
        assert_eq!(
            trigger(Side::Sell, Some(d("1.10020")), None, bid, ask),
            Some(CloseReason::Sl)
        );
        assert_eq!(
            trigger(Side::Sell, Some(d("1.10021")), None, bid, ask),
            None
        );
        assert_eq!(
            trigger(Side::Sell, None, Some(d("1.10020")), bid, ask),
            Some(CloseReason::Tp)
        );
        assert_eq!(
            trigger(Side::Sell, None, Some(d("1.10000")), bid, ask),
            None
        );
    }

    #[test]
    fn stop_loss_wins_when_both_levels_are_crossed() {
        let (bid, ask) = (d("1.2"), d("1.3"));
        assert_eq!(
            trigger(Side::Buy, Some(d("1.25")), Some(d("1.15")), bid, ask),
            Some(CloseReason::Sl)
        );
        assert_eq!(
            trigger(Side::Sell, Some(d("1.25")), Some(d("1.35")), bid, ask),
            Some(CloseReason::Sl)
        );
    }

    #[test]
    fn pnl_is_signed_by_side_and_exact() {
        assert_eq!(
            pnl_quote(Side::Buy, d("1.10000"), d("1.10250"), d("0.1"), d("100000")),
            Some(d("25"))
        );
        assert_eq!(
            pnl_quote(
                Side::Sell,
                d("1.10000"),
                d("1.10250"),
                d("0.1"),
                d("100000")
            ),
            Some(d("-25"))
        );
        // Overflow is reported, never a panic.
        assert_eq!(
            pnl_quote(Side::Buy, d("1"), d("1000000000"), d("1e20"), d("1e9")),
            None
        );
        assert_eq!(convert(d("1e28"), d("10"), 2), None);
        assert_eq!(MAX_MONEY, d("1e24"));
        assert_eq!(MAX_PRICE, d("1e9"));
        assert_eq!(convert(d("1e23"), d("11"), 2), None, "beyond MAX_MONEY");
        assert_eq!(convert(d("25"), d("0.9"), 2), Some(d("22.50")));
        assert_eq!(round_money(d("-2.345"), 2), d("-2.35"));
        assert_eq!(round_money(d("12.5"), 0).to_string(), "13");
    }

    #[test]
    fn prices_are_normalised_to_the_symbols_digits() {
        assert_eq!(
            normalise_price(d("1.1"), 5).expect("ok").to_string(),
            "1.10000"
        );
        assert_eq!(
            normalise_price(d("1.100000"), 5).expect("ok").to_string(),
            "1.10000"
        );
        assert!(normalise_price(d("1.100001"), 5).is_err());
        assert!(normalise_price(d("0"), 5).is_err());
        assert!(normalise_price(d("-1"), 5).is_err());
        assert_eq!(round_price(d("1.123456"), 5).to_string(), "1.12346");
    }

    #[test]
    fn levels_must_be_on_the_valid_side_of_the_quote() {
        let (bid, ask) = (d("1.1000"), d("1.1002"));
        assert!(check_level_side(Side::Buy, "stop_loss", d("1.0990"), bid, ask).is_ok());
        assert!(check_level_side(Side::Buy, "stop_loss", d("1.1000"), bid, ask).is_err());
        assert!(check_level_side(Side::Buy, "take_profit", d("1.1001"), bid, ask).is_ok());
        assert!(check_level_side(Side::Buy, "take_profit", d("1.0999"), bid, ask).is_err());
        assert!(check_level_side(Side::Sell, "stop_loss", d("1.1003"), bid, ask).is_ok());
        assert!(check_level_side(Side::Sell, "stop_loss", d("1.1001"), bid, ask).is_err());
        assert!(check_level_side(Side::Sell, "take_profit", d("1.1001"), bid, ask).is_ok());
        let err = check_level_side(Side::Sell, "take_profit", d("1.1002"), bid, ask)
            .expect_err("on the ask");
        assert!(err.contains("below the current ask"), "{err}");
    }

    #[test]
    fn calm_blur_uses_power_of_ten_bands() {
        assert_eq!(blur(d("123.45")), (d("100"), d("200")));
        assert_eq!(blur(d("-37.2")), (d("-40"), d("-30")));
        assert_eq!(blur(d("3")), (d("0"), d("10")));
        assert_eq!(blur(d("-3")), (d("-10"), d("0")));
        assert_eq!(blur(d("0")), (d("0"), d("10")));
        assert_eq!(blur(d("1000")), (d("1000"), d("2000")));
        assert_eq!(blur(d("-25000.5")), (d("-30000"), d("-20000")));
    }
}
