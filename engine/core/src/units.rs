//! Unit-aware lab values: UCUM codes and their common spellings, and conversions between them.
//!
//! [`canonical_unit`] maps a spelling (`mg/dl`, `µmol/L`, `lbs`, `mL/min/1.73 m2`…) to one
//! canonical UCUM-ish code. [`convert`] converts a value between two units: conversions that
//! only depend on the units (kg ↔ g ↔ `[lb_av]`, mass concentrations, pg/mL ↔ ng/L, molar
//! concentrations, mmol/L ↔ meq/L) need no analyte; conversions between a molar and a mass
//! quantity, or HbA1c NGSP % ↔ IFCC mmol/mol, need the LOINC code of the analyte.

/// Why a value could not be converted between two units.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The unit is neither a supported UCUM code nor a known spelling of one.
    #[error("unknown unit `{unit}`: not a supported ucum code or common spelling")]
    Unknown {
        /// The unit as given.
        unit: String,
    },
    /// The units measure different kinds of quantity, whatever the analyte.
    #[error("cannot convert `{from}` to `{to}`: the units measure different kinds of quantity")]
    Incompatible {
        /// The source unit as given.
        from: String,
        /// The target unit as given.
        to: String,
    },
    /// The conversion depends on the analyte, and no code of an analyte supporting it was given.
    #[error(
        "cannot convert `{from}` to `{to}` without the analyte: the factor depends on what is measured, so pass the loinc code of a supported analyte (hba1c, creatinine, glucose, cholesterol, nt-probnp, urine albumin/creatinine ratio)"
    )]
    NeedsAnalyte {
        /// The source unit as given.
        from: String,
        /// The target unit as given.
        to: String,
    },
    /// The value, or the converted result, is NaN or infinite.
    #[error("cannot convert: the value or its converted result is not a finite number")]
    NotFinite,
}

/// The kind of quantity a unit measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    /// Mass; factors in g.
    Mass,
    /// Mass concentration; factors in g/L.
    MassConc,
    /// Amount-of-substance concentration; factors in mol/L.
    SubstConc,
    /// Equivalent concentration; factors in eq/L (converted 1:1 with mol/L, monovalent ions).
    EquivConc,
    /// Percentage (HbA1c NGSP).
    Percent,
    /// Substance ratio mmol/mol (HbA1c IFCC).
    SubstRatio,
    /// Mass ratio mg/g (urine albumin/creatinine).
    MassRatio,
    /// Mass per substance mg/mmol (urine albumin/creatinine).
    MassPerSubst,
    /// Indexed glomerular filtration rate.
    IndexedFlow,
    /// Pressure.
    Pressure,
    /// Rate per minute.
    Rate,
}

impl Dim {
    /// The dimension used for conversions that need no analyte.
    const fn generic(self) -> Self {
        match self {
            // Monovalent ions: 1 mmol/L = 1 meq/L.
            Self::EquivConc => Self::SubstConc,
            other => other,
        }
    }
}

/// A supported unit: canonical code, dimension, factor to the dimension's base, spellings.
#[derive(Clone, Copy, Debug)]
struct UnitDef {
    /// Canonical UCUM-ish code.
    code: &'static str,
    /// What the unit measures.
    dim: Dim,
    /// Value of one unit in the base unit of `dim`.
    factor: f64,
    /// Other accepted spellings, lower-case, without whitespace, micro sign written `u`.
    aliases: &'static [&'static str],
}

const fn unit(
    code: &'static str,
    dim: Dim,
    factor: f64,
    aliases: &'static [&'static str],
) -> UnitDef {
    UnitDef {
        code,
        dim,
        factor,
        aliases,
    }
}

const KG: UnitDef = unit("kg", Dim::Mass, 1_000.0, &["kgs"]);
const G: UnitDef = unit("g", Dim::Mass, 1.0, &[]);
const LB: UnitDef = unit("[lb_av]", Dim::Mass, 453.592_37, &["lb", "lbs"]);
const G_L: UnitDef = unit("g/L", Dim::MassConc, 1.0, &[]);
const G_DL: UnitDef = unit("g/dL", Dim::MassConc, 10.0, &[]);
const MG_DL: UnitDef = unit("mg/dL", Dim::MassConc, 1e-2, &[]);
const MG_L: UnitDef = unit("mg/L", Dim::MassConc, 1e-3, &[]);
const NG_ML: UnitDef = unit("ng/mL", Dim::MassConc, 1e-6, &[]);
const PG_ML: UnitDef = unit("pg/mL", Dim::MassConc, 1e-9, &[]);
const NG_L: UnitDef = unit("ng/L", Dim::MassConc, 1e-9, &[]);
const MMOL_L: UnitDef = unit("mmol/L", Dim::SubstConc, 1e-3, &[]);
const UMOL_L: UnitDef = unit("umol/L", Dim::SubstConc, 1e-6, &[]);
const PMOL_L: UnitDef = unit("pmol/L", Dim::SubstConc, 1e-12, &[]);
const MEQ_L: UnitDef = unit("meq/L", Dim::EquivConc, 1e-3, &[]);
const PERCENT: UnitDef = unit("%", Dim::Percent, 1.0, &[]);
const MMOL_MOL: UnitDef = unit("mmol/mol", Dim::SubstRatio, 1.0, &[]);
const MG_G: UnitDef = unit("mg/g", Dim::MassRatio, 1.0, &[]);
const MG_MMOL: UnitDef = unit("mg/mmol", Dim::MassPerSubst, 1.0, &[]);
const EGFR: UnitDef = unit(
    "mL/min/{1.73_m2}",
    Dim::IndexedFlow,
    1.0,
    &["ml/min/1.73m2", "ml/min/{1.73m2}", "ml/min/1.73_m2"],
);
const MM_HG: UnitDef = unit("mm[Hg]", Dim::Pressure, 1.0, &["mmhg"]);
const PER_MIN: UnitDef = unit(
    "/min",
    Dim::Rate,
    1.0,
    &[
        "bpm",
        "1/min",
        "{beats}/min",
        "{beat}/min",
        "{breaths}/min",
        "{breath}/min",
        "{resp}/min",
    ],
);

/// Every supported unit.
const UNITS: [UnitDef; 21] = [
    KG, G, LB, G_L, G_DL, MG_DL, MG_L, NG_ML, PG_ML, NG_L, MMOL_L, UMOL_L, PMOL_L, MEQ_L, PERCENT,
    MMOL_MOL, MG_G, MG_MMOL, EGFR, MM_HG, PER_MIN,
];

/// How an analyte links two units of different dimensions.
#[derive(Clone, Copy, Debug)]
enum Link {
    /// `1 a = factor b`, extended to every unit of the same dimensions.
    Linear { a: UnitDef, b: UnitDef, factor: f64 },
    /// HbA1c: IFCC mmol/mol = (NGSP % − 2.15) × 10.929.
    Hba1c,
}

/// HbA1c master equation constants (NGSP % ↔ IFCC mmol/mol).
const HBA1C_OFFSET: f64 = 2.15;
const HBA1C_SLOPE: f64 = 10.929;

impl Link {
    /// Whether this link converts between units of dimensions `x` and `y` (either way).
    fn connects(&self, x: Dim, y: Dim) -> bool {
        let (p, q) = match self {
            Self::Linear { a, b, .. } => (a.dim, b.dim),
            Self::Hba1c => (Dim::Percent, Dim::SubstRatio),
        };
        (x == p && y == q) || (x == q && y == p)
    }

    /// Converts `value` from `from` to `to`; the caller has checked [`Link::connects`].
    fn apply(&self, value: f64, from: &UnitDef, to: &UnitDef) -> f64 {
        match *self {
            Self::Linear { a, b, factor } => {
                if from.dim == a.dim {
                    value * (from.factor / a.factor) * factor * (b.factor / to.factor)
                } else {
                    value * (from.factor / b.factor) / factor * (a.factor / to.factor)
                }
            }
            Self::Hba1c => {
                if from.dim == Dim::Percent {
                    (value - HBA1C_OFFSET) * HBA1C_SLOPE
                } else {
                    value / HBA1C_SLOPE + HBA1C_OFFSET
                }
            }
        }
    }
}

/// An analyte with a unit conversion that depends on it, and its LOINC codes.
#[derive(Debug)]
struct Analyte {
    /// LOINC codes that identify the analyte.
    codes: &'static [&'static str],
    /// The conversion it enables.
    link: Link,
}

/// Analyte-specific conversions.
const ANALYTES: [Analyte; 6] = [
    // HbA1c: NGSP % ↔ IFCC mmol/mol.
    Analyte {
        codes: &["4548-4", "17856-6", "59261-8"],
        link: Link::Hba1c,
    },
    // Creatinine: 1 mg/dL = 88.42 µmol/L.
    Analyte {
        codes: &["2160-0", "14682-9", "38483-4"],
        link: Link::Linear {
            a: MG_DL,
            b: UMOL_L,
            factor: 88.42,
        },
    },
    // Glucose: 1 mmol/L = 18.016 mg/dL.
    Analyte {
        codes: &["1558-6", "2345-7", "2339-0", "14749-6", "15074-8"],
        link: Link::Linear {
            a: MMOL_L,
            b: MG_DL,
            factor: 18.016,
        },
    },
    // Cholesterol (total, LDL, HDL): 1 mmol/L = 38.67 mg/dL.
    Analyte {
        codes: &["13457-7", "18262-6", "2093-3", "2089-1", "2085-9"],
        link: Link::Linear {
            a: MMOL_L,
            b: MG_DL,
            factor: 38.67,
        },
    },
    // NT-proBNP: 1 pmol/L = 8.457 pg/mL.
    Analyte {
        codes: &["33762-6"],
        link: Link::Linear {
            a: PMOL_L,
            b: PG_ML,
            factor: 8.457,
        },
    },
    // Urine albumin/creatinine ratio: 1 mg/mmol = 8.84 mg/g.
    Analyte {
        codes: &["9318-7", "14959-1", "14958-3", "32294-1"],
        link: Link::Linear {
            a: MG_MMOL,
            b: MG_G,
            factor: 8.84,
        },
    },
];

/// Removes whitespace and writes both micro signs as `u`, decimal commas as dots, `²` as `2`.
fn normalize(unit: &str) -> String {
    unit.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '\u{00B5}' | '\u{03BC}' => 'u',
            ',' => '.',
            '\u{00B2}' => '2',
            other => other,
        })
        .collect()
}

/// Whether ignoring case cannot change the meaning of `key`.
///
/// In case-sensitive UCUM an upper-case G, M, P or T starting a unit is giga, mega, peta or tera
/// (`Mg/dL`, `Pmol/L`), and French labs write cell counts as `G/L` (10⁹/L), so such spellings
/// are only folded when the whole unit is upper-case legacy text such as `MG/DL` and the letter
/// is not alone (`G/L` is rejected).
fn case_fold_is_safe(key: &str) -> bool {
    let all_upper = !key.chars().any(char::is_lowercase);
    key.split('/').all(|atom| match atom.chars().next() {
        Some('G' | 'M' | 'P' | 'T') => all_upper && atom.chars().count() > 1,
        _ => true,
    })
}

/// The supported unit written `unit`, if any.
fn lookup(unit: &str) -> Option<&'static UnitDef> {
    // A canonical code as written (most results): normalizing would not change it.
    if let Some(def) = UNITS.iter().find(|def| def.code == unit) {
        return Some(def);
    }
    let key = normalize(unit);
    if key.is_empty() {
        return None;
    }
    if let Some(def) = UNITS.iter().find(|def| def.code == key) {
        return Some(def);
    }
    if !case_fold_is_safe(&key) {
        return None;
    }
    let lower = key.to_lowercase();
    UNITS
        .iter()
        .find(|def| def.code.to_lowercase() == lower || def.aliases.contains(&lower.as_str()))
}

/// The canonical UCUM-ish code for a unit spelling (e.g. `mg/dl` → `mg/dL`), if supported.
///
/// Whitespace is ignored, both micro signs (U+00B5, U+03BC) read as `u`, a decimal comma as a
/// dot. Case is ignored except where it changes the meaning (`Mg/dL`, `G/L` are not supported).
pub fn canonical_unit(unit: &str) -> Option<&'static str> {
    lookup(unit).map(|def| def.code)
}

/// Whether `unit` is a supported unit or spelling of one.
pub fn is_known_unit(unit: &str) -> bool {
    lookup(unit).is_some()
}

/// The supported units, for a message to someone who wrote another one.
pub fn known_units_help() -> String {
    let codes: Vec<&str> = UNITS.iter().map(|u| u.code).collect();
    format!(
        "units parcours knows (UCUM; common spellings such as `mmHg` or `mg/dl` too): {}",
        codes.join(", ")
    )
}

/// Converts `value` from unit `from` to unit `to`; `code` is the LOINC code of the analyte.
///
/// The code is only needed (and only read) for analyte-specific conversions: HbA1c % ↔
/// mmol/mol, and molar ↔ mass quantities for creatinine, glucose, cholesterol, NT-proBNP and
/// the urine albumin/creatinine ratio.
///
/// # Errors
///
/// [`UnitError::Unknown`] for an unsupported unit, [`UnitError::Incompatible`] when no
/// conversion exists, [`UnitError::NeedsAnalyte`] when it exists but `code` does not name an
/// analyte that supports it, [`UnitError::NotFinite`] for a NaN or infinite value or result.
pub fn convert(value: f64, from: &str, to: &str, code: Option<&str>) -> Result<f64, UnitError> {
    if !value.is_finite() {
        return Err(UnitError::NotFinite);
    }
    let source = lookup(from).ok_or_else(|| UnitError::Unknown {
        unit: from.to_owned(),
    })?;
    let target = if to == from {
        source
    } else {
        lookup(to).ok_or_else(|| UnitError::Unknown {
            unit: to.to_owned(),
        })?
    };
    let converted = if source.code == target.code {
        value
    } else if source.dim.generic() == target.dim.generic() {
        value * (source.factor / target.factor)
    } else {
        convert_for_analyte(value, source, target, code).ok_or_else(|| {
            let (from, to) = (from.to_owned(), to.to_owned());
            if ANALYTES
                .iter()
                .any(|analyte| analyte.link.connects(source.dim, target.dim))
            {
                UnitError::NeedsAnalyte { from, to }
            } else {
                UnitError::Incompatible { from, to }
            }
        })?
    };
    if converted.is_finite() {
        Ok(converted)
    } else {
        Err(UnitError::NotFinite)
    }
}

/// The analyte-specific conversion, if `code` names an analyte that links the two units.
fn convert_for_analyte(
    value: f64,
    source: &UnitDef,
    target: &UnitDef,
    code: Option<&str>,
) -> Option<f64> {
    let code = code?.trim();
    let analyte = ANALYTES
        .iter()
        .find(|analyte| analyte.codes.contains(&code))?;
    analyte
        .link
        .connects(source.dim, target.dim)
        .then(|| analyte.link.apply(value, source, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HBA1C: Option<&str> = Some("4548-4");
    const CREATININE: Option<&str> = Some("2160-0");
    const GLUCOSE: Option<&str> = Some("2345-7");
    const LDL: Option<&str> = Some("13457-7");
    const NT_PROBNP: Option<&str> = Some("33762-6");
    const UACR: Option<&str> = Some("9318-7");

    fn close(actual: f64, expected: f64, tolerance: f64) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} is not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn canonical_codes_are_their_own_normal_form() {
        // `lookup` finds a code as written before normalizing: the same answer only while
        // normalizing leaves every code as it is.
        for def in &UNITS {
            assert_eq!(normalize(def.code), def.code);
            assert_eq!(lookup(def.code).map(|d| d.code), Some(def.code));
        }
    }

    #[test]
    fn canonical_spellings() {
        let cases = [
            ("kg", "kg"),
            ("KG", "kg"),
            ("g", "g"),
            ("[lb_av]", "[lb_av]"),
            ("lb", "[lb_av]"),
            ("lbs", "[lb_av]"),
            ("LBS", "[lb_av]"),
            ("%", "%"),
            ("mmol/mol", "mmol/mol"),
            ("mmol/L", "mmol/L"),
            ("mmol/l", "mmol/L"),
            ("MMOL/L", "mmol/L"),
            ("meq/L", "meq/L"),
            ("mEq/L", "meq/L"),
            ("umol/L", "umol/L"),
            ("umol/l", "umol/L"),
            ("\u{00B5}mol/L", "umol/L"),
            ("\u{03BC}mol/L", "umol/L"),
            ("\u{03BC}mol/l", "umol/L"),
            ("mg/dL", "mg/dL"),
            ("mg/dl", "mg/dL"),
            ("MG/DL", "mg/dL"),
            ("g/L", "g/L"),
            ("g/l", "g/L"),
            ("g/dL", "g/dL"),
            ("mg/L", "mg/L"),
            ("ng/mL", "ng/mL"),
            ("pg/mL", "pg/mL"),
            ("pg/ml", "pg/mL"),
            ("PG/ML", "pg/mL"),
            ("ng/L", "ng/L"),
            ("ng/l", "ng/L"),
            ("pmol/L", "pmol/L"),
            ("mL/min/{1.73_m2}", "mL/min/{1.73_m2}"),
            ("mL/min/1.73m2", "mL/min/{1.73_m2}"),
            ("ml/min/1,73m2", "mL/min/{1.73_m2}"),
            ("mL/min/1.73 m2", "mL/min/{1.73_m2}"),
            ("mL/min/1,73 m\u{00B2}", "mL/min/{1.73_m2}"),
            ("mg/g", "mg/g"),
            ("mg/mmol", "mg/mmol"),
            ("mm[Hg]", "mm[Hg]"),
            ("mmHg", "mm[Hg]"),
            ("/min", "/min"),
            ("bpm", "/min"),
            ("  mg/dL ", "mg/dL"),
        ];
        for (spelling, canonical) in cases {
            assert_eq!(canonical_unit(spelling), Some(canonical), "{spelling:?}");
            assert!(is_known_unit(spelling), "{spelling:?}");
        }
        for def in &UNITS {
            assert_eq!(canonical_unit(def.code), Some(def.code));
        }
    }

    #[test]
    fn unsafe_or_unknown_spellings() {
        // Upper-case prefixes that change the meaning are not folded.
        for spelling in [
            "Mg/dL", "Mmol/L", "Pmol/L", "Pg/mL", "G/L", "T/L", "Mmol/mol",
        ] {
            assert_eq!(canonical_unit(spelling), None, "{spelling:?}");
        }
        for spelling in [
            "", "   ", "{score}", "U/L", "mg", "mol/L", "kg/m2", "10*9/L", "m",
        ] {
            assert_eq!(canonical_unit(spelling), None, "{spelling:?}");
            assert!(!is_known_unit(spelling), "{spelling:?}");
        }
    }

    #[test]
    fn identity() {
        assert_eq!(convert(5.5, "mmol/l", "mmol/L", None), Ok(5.5));
        assert_eq!(convert(12.0, "µmol/L", "μmol/L", None), Ok(12.0));
        assert_eq!(convert(120.0, "mmHg", "mm[Hg]", None), Ok(120.0));
        assert_eq!(convert(7.0, "%", "%", HBA1C), Ok(7.0));
    }

    #[test]
    fn mass() {
        close(convert(176.0, "lb", "kg", None).unwrap(), 79.83, 0.01);
        close(
            convert(176.0, "lbs", "kg", None).unwrap(),
            79.832_257_12,
            1e-9,
        );
        close(
            convert(1.0, "kg", "[lb_av]", None).unwrap(),
            2.204_622_6,
            1e-6,
        );
        assert_eq!(convert(2.5, "kg", "g", None), Ok(2_500.0));
        assert_eq!(convert(500.0, "g", "kg", None), Ok(0.5));
    }

    #[test]
    fn mass_concentration_without_analyte() {
        close(convert(100.0, "mg/dL", "g/L", None).unwrap(), 1.0, 1e-12);
        close(convert(1.0, "g/L", "mg/L", None).unwrap(), 1_000.0, 1e-9);
        close(convert(3.0, "mg/L", "mg/dL", None).unwrap(), 0.3, 1e-12);
        close(convert(14.0, "g/dL", "g/L", None).unwrap(), 140.0, 1e-9);
        assert_eq!(convert(125.0, "pg/mL", "ng/L", None), Ok(125.0));
        assert_eq!(convert(125.0, "ng/l", "pg/ml", None), Ok(125.0));
        close(convert(1.0, "ng/mL", "pg/mL", None).unwrap(), 1_000.0, 1e-9);
    }

    #[test]
    fn molar_concentration_without_analyte() {
        assert_eq!(convert(140.0, "mmol/L", "meq/L", None), Ok(140.0));
        assert_eq!(convert(4.2, "mEq/L", "mmol/l", None), Ok(4.2));
        close(
            convert(1.0, "mmol/L", "umol/L", None).unwrap(),
            1_000.0,
            1e-9,
        );
        close(
            convert(88.42, "µmol/L", "mmol/L", None).unwrap(),
            0.088_42,
            1e-12,
        );
    }

    #[test]
    fn hba1c() {
        close(convert(7.0, "%", "mmol/mol", HBA1C).unwrap(), 53.0, 0.5);
        close(convert(53.0, "mmol/mol", "%", HBA1C).unwrap(), 7.0, 0.05);
        close(
            convert(6.5, "%", "mmol/mol", Some("17856-6")).unwrap(),
            47.5,
            0.5,
        );
        close(
            convert(48.0, "mmol/mol", "%", Some("59261-8")).unwrap(),
            6.5,
            0.05,
        );
        let round_trip = convert(
            convert(8.1, "%", "mmol/mol", HBA1C).unwrap(),
            "mmol/mol",
            "%",
            HBA1C,
        );
        close(round_trip.unwrap(), 8.1, 1e-9);
    }

    #[test]
    fn creatinine() {
        close(
            convert(1.0, "mg/dL", "umol/L", CREATININE).unwrap(),
            88.42,
            1e-9,
        );
        close(
            convert(1.0, "mg/dL", "µmol/L", Some("14682-9")).unwrap(),
            88.42,
            1e-9,
        );
        close(
            convert(1.0, "mg/dl", "μmol/L", Some("38483-4")).unwrap(),
            88.42,
            1e-9,
        );
        close(
            convert(88.42, "umol/l", "mg/dL", CREATININE).unwrap(),
            1.0,
            1e-12,
        );
        // Extended through the generic factors: 10 mg/L = 1 mg/dL.
        close(
            convert(10.0, "mg/L", "umol/L", CREATININE).unwrap(),
            88.42,
            1e-9,
        );
    }

    #[test]
    fn glucose() {
        close(convert(1.0, "g/L", "mmol/L", GLUCOSE).unwrap(), 5.55, 0.005);
        close(
            convert(5.5, "mmol/L", "mg/dL", Some("1558-6")).unwrap(),
            99.088,
            1e-9,
        );
        close(
            convert(99.088, "mg/dL", "mmol/L", Some("2339-0")).unwrap(),
            5.5,
            1e-9,
        );
        close(
            convert(7.0, "mmol/L", "g/L", Some("14749-6")).unwrap(),
            1.261_12,
            1e-9,
        );
        close(
            convert(126.0, "mg/dl", "mmol/l", Some("15074-8")).unwrap(),
            6.9938,
            1e-4,
        );
    }

    #[test]
    fn cholesterol() {
        close(convert(2.6, "mmol/L", "mg/dL", LDL).unwrap(), 100.542, 1e-9);
        close(
            convert(1.0, "g/L", "mmol/L", Some("18262-6")).unwrap(),
            2.586,
            0.001,
        );
        close(
            convert(5.0, "mmol/L", "g/L", Some("2093-3")).unwrap(),
            1.9335,
            1e-9,
        );
        close(
            convert(38.67, "mg/dL", "mmol/L", Some("2089-1")).unwrap(),
            1.0,
            1e-12,
        );
        close(
            convert(1.0, "mmol/L", "mg/dL", Some("2085-9")).unwrap(),
            38.67,
            1e-12,
        );
    }

    #[test]
    fn nt_probnp() {
        close(
            convert(100.0, "pmol/L", "pg/mL", NT_PROBNP).unwrap(),
            845.7,
            1e-9,
        );
        close(
            convert(845.7, "pg/ml", "pmol/L", NT_PROBNP).unwrap(),
            100.0,
            1e-9,
        );
        close(
            convert(100.0, "pmol/L", "ng/L", NT_PROBNP).unwrap(),
            845.7,
            1e-9,
        );
    }

    #[test]
    fn urine_albumin_creatinine_ratio() {
        close(convert(30.0, "mg/g", "mg/mmol", UACR).unwrap(), 3.39, 0.005);
        close(
            convert(3.0, "mg/mmol", "mg/g", Some("14959-1")).unwrap(),
            26.52,
            1e-9,
        );
        close(
            convert(300.0, "mg/g", "mg/mmol", Some("14958-3")).unwrap(),
            33.94,
            0.005,
        );
        close(
            convert(30.0, "mg/g", "mg/mmol", Some("32294-1")).unwrap(),
            3.3937,
            1e-4,
        );
    }

    #[test]
    fn code_is_trimmed_and_ignored_when_not_needed() {
        close(
            convert(1.0, "g/L", "mmol/L", Some(" 2345-7 ")).unwrap(),
            5.55,
            0.005,
        );
        assert_eq!(convert(2.0, "kg", "g", GLUCOSE), Ok(2_000.0));
    }

    #[test]
    fn unknown_unit() {
        assert_eq!(
            convert(1.0, "furlong", "kg", None),
            Err(UnitError::Unknown {
                unit: "furlong".to_owned()
            })
        );
        assert_eq!(
            convert(1.0, "kg", "G/L", None),
            Err(UnitError::Unknown {
                unit: "G/L".to_owned()
            })
        );
    }

    #[test]
    fn incompatible_units() {
        let err = convert(1.0, "kg", "mmol/L", None).unwrap_err();
        assert_eq!(
            err,
            UnitError::Incompatible {
                from: "kg".to_owned(),
                to: "mmol/L".to_owned()
            }
        );
        // Even with an analyte code, no analyte links these.
        assert!(matches!(
            convert(120.0, "mmHg", "/min", GLUCOSE),
            Err(UnitError::Incompatible { .. })
        ));
        assert!(matches!(
            convert(7.0, "%", "mmol/L", HBA1C),
            Err(UnitError::Incompatible { .. })
        ));
        // meq/L is only 1:1 with molar units, never linked to a mass by an analyte.
        assert!(matches!(
            convert(5.0, "meq/L", "mg/dL", GLUCOSE),
            Err(UnitError::Incompatible { .. })
        ));
    }

    #[test]
    fn needs_analyte() {
        let pairs = [
            ("%", "mmol/mol"),
            ("mg/dL", "umol/L"),
            ("mmol/L", "mg/dL"),
            ("g/L", "mmol/L"),
            ("pmol/L", "pg/mL"),
            ("mg/g", "mg/mmol"),
        ];
        for (from, to) in pairs {
            assert_eq!(
                convert(1.0, from, to, None),
                Err(UnitError::NeedsAnalyte {
                    from: from.to_owned(),
                    to: to.to_owned()
                }),
                "{from} -> {to}"
            );
        }
        // A code that does not support the conversion is not enough.
        assert!(matches!(
            convert(7.0, "%", "mmol/mol", GLUCOSE),
            Err(UnitError::NeedsAnalyte { .. })
        ));
        assert!(matches!(
            convert(1.0, "mg/dL", "mmol/L", Some("0000-0")),
            Err(UnitError::NeedsAnalyte { .. })
        ));
    }

    #[test]
    fn not_finite() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(convert(value, "kg", "g", None), Err(UnitError::NotFinite));
        }
        assert_eq!(
            convert(f64::MAX, "kg", "g", None),
            Err(UnitError::NotFinite)
        );
        assert_eq!(
            convert(f64::MAX, "pmol/L", "pg/mL", NT_PROBNP),
            Err(UnitError::NotFinite)
        );
    }

    #[test]
    fn error_messages() {
        let errors = [
            UnitError::Unknown {
                unit: "furlong".to_owned(),
            },
            UnitError::Incompatible {
                from: "kg".to_owned(),
                to: "mmHg".to_owned(),
            },
            UnitError::NeedsAnalyte {
                from: "mg/dL".to_owned(),
                to: "mmol/L".to_owned(),
            },
            UnitError::NotFinite,
        ];
        for err in &errors {
            // Lower-case apart from the unit names, which are quoted as given.
            let msg = err
                .to_string()
                .replace("mmHg", "")
                .replace("mg/dL", "")
                .replace("mmol/L", "");
            assert_eq!(msg, msg.to_lowercase(), "{msg}");
        }
        assert!(errors[0].to_string().contains("`furlong`"));
        let incompatible = errors[1].to_string();
        assert!(incompatible.contains("`kg` to `mmHg`"), "{incompatible}");
        assert!(incompatible.contains("different kinds"), "{incompatible}");
        assert!(errors[2].to_string().contains("`mg/dL` to `mmol/L`"));
        let needs = errors[2].to_string();
        assert!(needs.contains("loinc code"), "{needs}");
        assert!(errors[3].to_string().contains("not a finite number"));
    }
}
