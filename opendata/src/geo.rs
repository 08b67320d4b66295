//! Coordinates to cells: the ellipsoidal Lambert azimuthal equal-area projection onto
//! EPSG:3035 (ETRS89-LAEA, IOGP Guidance Note 7-2, method 9820) for the INSPIRE/EEA reference
//! grid, and point-in-polygon lookup of regions from a GeoJSON FeatureCollection.

use serde_json::Value;

/// GRS80 semi-major axis (metres).
const A: f64 = 6_378_137.0;
/// GRS80 inverse flattening.
const INV_F: f64 = 298.257_222_101;
/// EPSG:3035 natural origin latitude (52°N) and longitude (10°E).
const LAT0_DEG: f64 = 52.0;
const LON0_DEG: f64 = 10.0;
/// EPSG:3035 false easting and northing (metres).
const FALSE_EASTING: f64 = 4_321_000.0;
const FALSE_NORTHING: f64 = 3_210_000.0;

/// The EPSG:3035 forward projection with its constants computed once.
#[derive(Debug, Clone, Copy)]
pub struct Laea {
    e: f64,
    e2: f64,
    qp: f64,
    rq: f64,
    d: f64,
    sin_b0: f64,
    cos_b0: f64,
    lon0: f64,
}

impl Default for Laea {
    fn default() -> Self {
        Laea::epsg3035()
    }
}

impl Laea {
    /// The projection of EPSG:3035.
    pub fn epsg3035() -> Laea {
        let f = 1.0 / INV_F;
        let e2 = 2.0 * f - f * f;
        let e = e2.sqrt();
        let phi0 = LAT0_DEG.to_radians();
        let q = |phi: f64| {
            let s = phi.sin();
            (1.0 - e2)
                * (s / (1.0 - e2 * s * s)
                    - (1.0 / (2.0 * e)) * ((1.0 - e * s) / (1.0 + e * s)).ln())
        };
        let qp = q(std::f64::consts::FRAC_PI_2);
        let q0 = q(phi0);
        let b0 = (q0 / qp).asin();
        let rq = A * (qp / 2.0).sqrt();
        let d = A * (phi0.cos() / (1.0 - e2 * phi0.sin().powi(2)).sqrt()) / (rq * b0.cos());
        Laea {
            e,
            e2,
            qp,
            rq,
            d,
            sin_b0: b0.sin(),
            cos_b0: b0.cos(),
            lon0: LON0_DEG.to_radians(),
        }
    }

    /// Easting and northing (metres) of a latitude and longitude in degrees (ETRS89).
    pub fn forward(&self, lat_deg: f64, lon_deg: f64) -> (f64, f64) {
        let phi = lat_deg.to_radians();
        let s = phi.sin();
        let es = self.e * s;
        let q = (1.0 - self.e2)
            * (s / (1.0 - self.e2 * s * s)
                - (1.0 / (2.0 * self.e)) * ((1.0 - es) / (1.0 + es)).ln());
        let beta = (q / self.qp).clamp(-1.0, 1.0).asin();
        let (sin_b, cos_b) = beta.sin_cos();
        let (sin_dl, cos_dl) = (lon_deg.to_radians() - self.lon0).sin_cos();
        let b = self.rq * (2.0 / (1.0 + self.sin_b0 * sin_b + self.cos_b0 * cos_b * cos_dl)).sqrt();
        let east = FALSE_EASTING + b * self.d * cos_b * sin_dl;
        let north =
            FALSE_NORTHING + (b / self.d) * (self.cos_b0 * sin_b - self.sin_b0 * cos_b * cos_dl);
        (east, north)
    }
}

/// The grid cell (column, row) of size `size_m` containing a projected point: the lower-left
/// corner divided by the cell size.
pub fn grid_cell(east: f64, north: f64, size_m: u32) -> (i64, i64) {
    let s = f64::from(size_m);
    ((east / s).floor() as i64, (north / s).floor() as i64)
}

/// The INSPIRE identifier of a grid cell: `CRS3035RES{size}mN{northing}E{easting}` with the lower
/// left corner's coordinates in metres (INSPIRE Data Specification on Geographical Grid Systems).
pub fn grid_cell_name(col: i64, row: i64, size_m: u32) -> String {
    let s = i64::from(size_m);
    format!("CRS3035RES{size_m}mN{}E{}", row * s, col * s)
}

/// A polygon: an outer ring and holes, each as (lon, lat) vertices.
#[derive(Debug, Clone)]
struct Polygon {
    rings: Vec<Vec<(f64, f64)>>,
    bbox: (f64, f64, f64, f64),
}

/// Named regions read from a GeoJSON FeatureCollection of Polygon and MultiPolygon features.
#[derive(Debug, Clone, Default)]
pub struct Regions {
    names: Vec<String>,
    polygons: Vec<(usize, Polygon)>,
}

/// The region name given to points inside no region.
pub const OUTSIDE: &str = "outside";

impl Regions {
    /// Parses a FeatureCollection; `property` names each feature's region.
    pub fn from_geojson(text: &str, property: &str) -> Result<Regions, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if doc.get("type").and_then(Value::as_str) != Some("FeatureCollection") {
            return Err("expected a GeoJSON `FeatureCollection`".into());
        }
        let features = doc
            .get("features")
            .and_then(Value::as_array)
            .ok_or("missing `features`")?;
        let mut regions = Regions::default();
        for (i, f) in features.iter().enumerate() {
            let name = match f.get("properties").and_then(|p| p.get(property)) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(format!("feature {i} has no property `{property}`")),
            };
            if name == OUTSIDE {
                return Err(format!("feature {i}: region name `{OUTSIDE}` is reserved"));
            }
            let geom = f
                .get("geometry")
                .ok_or_else(|| format!("feature {i} has no geometry"))?;
            let coords = geom
                .get("coordinates")
                .ok_or_else(|| format!("feature {i} has no coordinates"))?;
            let polys: Vec<&Value> = match geom.get("type").and_then(Value::as_str) {
                Some("Polygon") => vec![coords],
                Some("MultiPolygon") => coords
                    .as_array()
                    .ok_or_else(|| format!("feature {i}: bad MultiPolygon"))?
                    .iter()
                    .collect(),
                other => {
                    return Err(format!(
                        "feature {i}: geometry `{}` is not a Polygon or MultiPolygon",
                        other.unwrap_or("none")
                    ));
                }
            };
            let idx = match regions.names.iter().position(|n| *n == name) {
                Some(p) => p,
                None => {
                    regions.names.push(name);
                    regions.names.len() - 1
                }
            };
            for p in polys {
                regions.polygons.push((
                    idx,
                    parse_polygon(p).map_err(|e| format!("feature {i}: {e}"))?,
                ));
            }
        }
        Ok(regions)
    }

    /// The region names, indexed by what [`Regions::locate`] returns.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The index of the first region containing the point, or `None` (outside every region).
    pub fn locate(&self, lat: f64, lon: f64) -> Option<usize> {
        self.polygons
            .iter()
            .find(|(_, p)| p.contains(lon, lat))
            .map(|(i, _)| *i)
    }
}

fn parse_polygon(v: &Value) -> Result<Polygon, String> {
    let rings_v = v.as_array().ok_or("bad polygon")?;
    let mut rings = Vec::new();
    for r in rings_v {
        let pts = r.as_array().ok_or("bad ring")?;
        let mut ring = Vec::with_capacity(pts.len());
        for p in pts {
            let xy = p.as_array().ok_or("bad position")?;
            let x = xy.first().and_then(Value::as_f64).ok_or("bad position")?;
            let y = xy.get(1).and_then(Value::as_f64).ok_or("bad position")?;
            ring.push((x, y));
        }
        if ring.len() < 4 {
            return Err("a ring needs at least four positions".into());
        }
        rings.push(ring);
    }
    let outer = rings.first().ok_or("polygon without rings")?;
    let mut bbox = (
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in outer {
        bbox = (bbox.0.min(x), bbox.1.min(y), bbox.2.max(x), bbox.3.max(y));
    }
    Ok(Polygon { rings, bbox })
}

/// Even-odd ray casting for one ring.
fn in_ring(ring: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = ring.len() - 1;
    for i in 0..ring.len() {
        let (xi, yi) = ring[i];
        let (xj, yj) = ring[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

impl Polygon {
    fn contains(&self, x: f64, y: f64) -> bool {
        let (x0, y0, x1, y1) = self.bbox;
        if x < x0 || x > x1 || y < y0 || y > y1 {
            return false;
        }
        let mut rings = self.rings.iter();
        match rings.next() {
            Some(outer) if in_ring(outer, x, y) => !rings.any(|hole| in_ring(hole, x, y)),
            _ => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn epsg3035_matches_the_iogp_test_vector() {
        // IOGP Guidance Note 7-2, method 9820: φ = 50°N, λ = 5°E → E = 3962799.45, N = 2999718.85.
        let (e, n) = Laea::epsg3035().forward(50.0, 5.0);
        assert!((e - 3_962_799.45).abs() < 0.01, "easting {e}");
        assert!((n - 2_999_718.85).abs() < 0.01, "northing {n}");
        // The natural origin maps to the false origin.
        let (e, n) = Laea::epsg3035().forward(52.0, 10.0);
        assert!((e - 4_321_000.0).abs() < 1e-6 && (n - 3_210_000.0).abs() < 1e-6);
    }

    #[test]
    fn grid_cells_are_named_like_inspire() {
        let (e, n) = Laea::epsg3035().forward(50.0, 5.0);
        let (c, r) = grid_cell(e, n, 500);
        assert_eq!(grid_cell_name(c, r, 500), "CRS3035RES500mN2999500E3962500");
        let (c, r) = grid_cell(e, n, 1000);
        assert_eq!(
            grid_cell_name(c, r, 1000),
            "CRS3035RES1000mN2999000E3962000"
        );
    }

    const DONUT: &str = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","properties":{"name":"ring"},"geometry":{"type":"Polygon","coordinates":[
        [[0,0],[10,0],[10,10],[0,10],[0,0]],
        [[3,3],[7,3],[7,7],[3,7],[3,3]]]}},
      {"type":"Feature","properties":{"name":"islands"},"geometry":{"type":"MultiPolygon","coordinates":[
        [[[20,20],[21,20],[21,21],[20,21],[20,20]]],
        [[[4,4],[6,4],[6,6],[4,6],[4,4]]]]}}]}"#;

    #[test]
    fn point_in_polygon_respects_holes() {
        let r = Regions::from_geojson(DONUT, "name").unwrap();
        let name = |lat, lon| r.locate(lat, lon).map(|i| r.names()[i].as_str());
        assert_eq!(name(1.0, 1.0), Some("ring"));
        // In the hole of `ring`, outside the island inside it: no region.
        assert_eq!(name(3.5, 3.5), None);
        // In the hole and in the island placed in it.
        assert_eq!(name(5.0, 5.0), Some("islands"));
        assert_eq!(name(20.5, 20.5), Some("islands"));
        assert_eq!(name(15.0, 15.0), None);
    }

    #[test]
    fn bad_geojson_is_refused() {
        assert!(Regions::from_geojson("{}", "name").is_err());
        assert!(Regions::from_geojson(DONUT, "missing").is_err());
        let line = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"name":"x"},"geometry":{"type":"LineString","coordinates":[[0,0],[1,1]]}}]}"#;
        assert!(
            Regions::from_geojson(line, "name")
                .unwrap_err()
                .contains("LineString")
        );
    }
}
