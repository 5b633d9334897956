//! The virtual network: per-link latency drawn from a distribution, i.i.d. loss, duplication,
//! reordering, and partitions (symmetric or one-way) between groups of nodes.

use colony_base::SplitMix64;

/// A one-way latency distribution, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub enum Latency {
    /// Always the same.
    Const(u64),
    /// Uniform between two bounds.
    Uniform(u64, u64),
    /// Normal with a mean and standard deviation, truncated at zero.
    Normal(u64, u64),
    /// Exponential tail above a floor: `floor + Exp(mean)` (a queueing link).
    Exp(u64, u64),
}

impl Latency {
    /// Parses `const:0.5ms`, `uniform:0.2ms,2ms`, `normal:1ms,0.3ms`, `exp:0.2ms,1ms` (units:
    /// `us`, `ms`, `s`).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (kind, args) = spec.split_once(':').unwrap_or(("const", spec));
        let vals: Result<Vec<u64>, String> = args.split(',').map(parse_time).collect();
        let vals = vals?;
        match (kind, vals.as_slice()) {
            ("const", [a]) => Ok(Self::Const(*a)),
            ("uniform", [a, b]) if a <= b => Ok(Self::Uniform(*a, *b)),
            ("normal", [m, s]) => Ok(Self::Normal(*m, *s)),
            ("exp", [f, m]) => Ok(Self::Exp(*f, *m)),
            _ => Err(format!(
                "bad latency {spec:?}: use const:T, uniform:LO,HI, normal:MEAN,SD or exp:FLOOR,MEAN"
            )),
        }
    }

    /// Draws one latency.
    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        match *self {
            Self::Const(v) => v,
            Self::Uniform(a, b) => a + rng.below(b - a + 1),
            Self::Normal(m, s) => {
                // Box–Muller from two uniforms.
                let u1 = unit(rng).max(1e-12);
                let u2 = unit(rng);
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (m as f64 + z * s as f64).max(0.0) as u64
            }
            Self::Exp(f, m) => f + (-(unit(rng).max(1e-12)).ln() * m as f64) as u64,
        }
    }
}

/// A uniform draw in [0, 1).
pub fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses `250us`, `1.5ms`, `2s` (a bare number is milliseconds) into microseconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        (s, 1e3)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad time {s:?} (use e.g. 500us, 1.5ms, 2s)"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("bad time {s:?}"));
    }
    Ok((v * mult) as u64)
}

/// A partition: nodes split into consecutive groups by size, cut from `start` for `duration`.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// Group sizes, in node order (`25/25`).
    pub sizes: Vec<usize>,
    /// When the cut starts (µs).
    pub start: u64,
    /// How long it lasts (µs).
    pub duration: u64,
    /// One-way: only traffic from a lower group to a higher group is cut.
    pub one_way: bool,
}

impl Partition {
    /// Parses `SIZES@START+DURATION[:oneway]`, e.g. `25/25@30s+120s` or `1/19@10s+20s:oneway`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "bad partition {spec:?}: use SIZES@START+DURATION[:oneway], e.g. 25/25@30s+120s"
            )
        };
        let (body, one_way) = match spec.strip_suffix(":oneway") {
            Some(b) => (b, true),
            None => (spec, false),
        };
        let (sizes, when) = body.split_once('@').ok_or_else(err)?;
        let (start, duration) = when.split_once('+').ok_or_else(err)?;
        let sizes: Result<Vec<usize>, _> = sizes.split('/').map(str::parse).collect();
        let sizes = sizes.map_err(|_| err())?;
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(err());
        }
        Ok(Self {
            sizes,
            start: parse_time(start)?,
            duration: parse_time(duration)?,
            one_way,
        })
    }

    /// Group of node `i` (nodes past the listed sizes join the last group).
    pub fn group(&self, i: usize) -> usize {
        let mut end = 0;
        for (g, size) in self.sizes.iter().enumerate() {
            end += size;
            if i < end {
                return g;
            }
        }
        self.sizes.len() - 1
    }

    /// Whether a packet from `a` to `b` is cut at time `now`.
    pub fn blocks(&self, now: u64, a: usize, b: usize) -> bool {
        if now < self.start || now >= self.start + self.duration {
            return false;
        }
        let (ga, gb) = (self.group(a), self.group(b));
        if self.one_way { ga < gb } else { ga != gb }
    }
}

/// Link behaviour shared by all links.
#[derive(Debug, Clone, PartialEq)]
pub struct NetModel {
    /// One-way latency.
    pub latency: Latency,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability a datagram is held back by an extra delay (reordering it).
    pub reorder: f64,
    /// The extra delay of a reordered datagram.
    pub reorder_delay: u64,
    /// Partitions, applied in addition to the link model.
    pub partitions: Vec<Partition>,
}

impl Default for NetModel {
    fn default() -> Self {
        Self {
            latency: Latency::Normal(500, 100),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: 5_000,
            partitions: Vec::new(),
        }
    }
}

impl NetModel {
    /// Whether `a` can reach `b` at `now`.
    pub fn connected(&self, now: u64, a: usize, b: usize) -> bool {
        !self.partitions.iter().any(|p| p.blocks(now, a, b))
    }

    /// Delivery delays of one datagram (empty: lost; two: duplicated).
    pub fn datagram(&self, now: u64, a: usize, b: usize, rng: &mut SplitMix64, out: &mut Vec<u64>) {
        out.clear();
        if !self.connected(now, a, b) || (self.loss > 0.0 && unit(rng) < self.loss) {
            return;
        }
        out.push(self.one(rng));
        if self.duplicate > 0.0 && unit(rng) < self.duplicate {
            out.push(self.one(rng));
        }
    }

    fn one(&self, rng: &mut SplitMix64) -> u64 {
        let mut d = self.latency.sample(rng);
        if self.reorder > 0.0 && unit(rng) < self.reorder {
            d += self.reorder_delay;
        }
        d
    }

    /// Delivery delay of a stream frame (a TCP connection: handshake plus data, each lost
    /// packet costing a 200 ms retransmission), or `None` if the link is cut either way.
    pub fn stream(&self, now: u64, a: usize, b: usize, rng: &mut SplitMix64) -> Option<u64> {
        if !self.connected(now, a, b) || !self.connected(now, b, a) {
            return None;
        }
        let mut d = 0;
        for _ in 0..3 {
            d += self.latency.sample(rng);
            let mut rto = 200_000;
            while self.loss > 0.0 && unit(rng) < self.loss {
                d += rto;
                rto *= 2;
                if rto > 10_000_000 {
                    return None;
                }
            }
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(Latency::parse("const:0.5ms"), Ok(Latency::Const(500)));
        assert_eq!(
            Latency::parse("uniform:200us,2ms"),
            Ok(Latency::Uniform(200, 2000))
        );
        assert!(Latency::parse("normal:1ms").is_err());
        let p = Partition::parse("25/25@30s+120s").expect("valid");
        assert_eq!((p.group(24), p.group(25)), (0, 1));
        assert!(p.blocks(30_000_000, 0, 30) && p.blocks(30_000_000, 30, 0));
        assert!(!p.blocks(150_000_000, 0, 30), "healed");
        let one = Partition::parse("1/4@0s+10s:oneway").expect("valid");
        assert!(one.blocks(1, 0, 3) && !one.blocks(1, 3, 0));
        assert!(Partition::parse("25@1s+2s").is_err());
    }

    #[test]
    fn loss_and_duplication_follow_their_rates() {
        let net = NetModel {
            loss: 0.2,
            duplicate: 0.1,
            ..NetModel::default()
        };
        let mut rng = SplitMix64::new(7);
        let (mut lost, mut dup) = (0, 0);
        let mut out = Vec::new();
        for _ in 0..100_000 {
            net.datagram(0, 0, 1, &mut rng, &mut out);
            lost += usize::from(out.is_empty());
            dup += usize::from(out.len() == 2);
        }
        assert!((19_000..21_000).contains(&lost), "{lost}");
        assert!((7_000..9_000).contains(&dup), "{dup}");
    }
}
