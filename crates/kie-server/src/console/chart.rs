//! The Overview's chart: credits spent per day over the last 30 days, drawn on the
//! server as inline SVG. Accessible: `role="img"` with a title and a description that
//! states the total and the busiest day, a `<title>` per bar (day and amount), and the
//! same figures as a table for screen readers and text browsers.

use kie_wire::Credits;
use maud::{html, Markup};

/// One day: its date (`YYYY-MM-DD`) and the credits spent that day.
pub struct Day {
    pub date: String,
    pub spent: Credits,
}

const W: f64 = 720.0;
const H: f64 = 180.0;
const PAD_LEFT: f64 = 48.0;
const PAD_BOTTOM: f64 = 22.0;

/// The chart of `days` (oldest first).
pub fn spent_per_day(days: &[Day]) -> Markup {
    let top = days.iter().map(|d| d.spent.0).max().unwrap_or(0);
    let max = top.max(1);
    let total: i64 = days.iter().map(|d| d.spent.0).sum();
    let busiest = days.iter().max_by_key(|d| d.spent.0);
    let desc = match busiest {
        Some(b) if b.spent.0 > 0 => format!(
            "{} credits spent in {} days; most on {} ({} credits).",
            Credits(total),
            days.len(),
            b.date,
            b.spent
        ),
        _ => format!("No credits spent in the last {} days.", days.len()),
    };
    let n = days.len().max(1) as f64;
    let slot = (W - PAD_LEFT) / n;
    let bar_w = (slot * 0.7).max(1.0);
    let plot_h = H - PAD_BOTTOM - 8.0;
    html! {
        figure.chart {
            svg id="spent-chart" role="img" aria-labelledby="spent-chart-title spent-chart-desc"
                viewBox=(format!("0 0 {W} {H}")) width="100%" preserveAspectRatio="xMidYMid meet"
                xmlns="http://www.w3.org/2000/svg" {
                title id="spent-chart-title" { "Credits spent per day, last 30 days" }
                desc id="spent-chart-desc" { (desc) }
                line x1=(PAD_LEFT) y1=(H - PAD_BOTTOM) x2=(W) y2=(H - PAD_BOTTOM) class="axis" {}
                text x=(PAD_LEFT - 6.0) y="14" text-anchor="end" class="tick" { (Credits(top)) }
                text x=(PAD_LEFT - 6.0) y=(H - PAD_BOTTOM) text-anchor="end" class="tick" { "0" }
                @for (i, d) in days.iter().enumerate() {
                    @let h = (d.spent.0 as f64 / max as f64) * plot_h;
                    @let x = PAD_LEFT + i as f64 * slot + (slot - bar_w) / 2.0;
                    rect class="bar" x=(format!("{x:.1}")) y=(format!("{:.1}", H - PAD_BOTTOM - h))
                        width=(format!("{bar_w:.1}")) height=(format!("{h:.1}")) {
                        title { (d.date) ": " (d.spent) " credits" }
                    }
                    // weekly labels counted back from today (the last bar)
                    @if (days.len() - 1 - i).is_multiple_of(7) {
                        text x=(format!("{:.1}", x + bar_w / 2.0)) y=(H - 6.0)
                            text-anchor=(if i + 1 == days.len() { "end" } else { "middle" }) class="tick" {
                            (d.date.get(5..).unwrap_or(&d.date))
                        }
                    }
                }
            }
            figcaption { (desc) }
            details {
                summary { "Figures" }
                table {
                    thead { tr { th scope="col" { "Day" } th scope="col" { "Credits spent" } } }
                    tbody {
                        @for d in days {
                            tr { td { (d.date) } td.num { (d.spent) } }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_bar_per_day_and_says_what_it_shows() {
        let days: Vec<Day> = (1..=30)
            .map(|i| Day {
                date: format!("2026-11-{i:02}"),
                spent: Credits(if i == 7 { 1250 } else { 100 }),
            })
            .collect();
        let svg = spent_per_day(&days).into_string();
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 30);
        assert!(svg.contains("role=\"img\""));
        assert!(svg.contains("most on 2026-11-07 (12.5 credits)"), "{svg}");
    }
}
