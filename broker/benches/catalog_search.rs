//! Catalog search over 10,000 entries: the in-memory index against a naive
//! linear scan (fold every entry's text on every query), in the same run.
//!
//! `cargo bench -p allmende --bench catalog_search`; the figures are recorded
//! in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "bench")]

use allmende::catalog::search::naive_search;
use allmende::catalog::{
    AccessRights, CatalogEntry, DatasetDescription, DatasetSchema, Frequency, SearchIndex,
    SearchQuery, Theme,
};
use allmende_connectors::{FieldSpec, FieldType};
use allmende_policies::{Classification, LegalBasis};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const ENTRIES: usize = 10_000;

const WORDS: &[&str] = &[
    "Luftqualität",
    "Stickstoffdioxid",
    "Feinstaub",
    "Messstation",
    "Verkehrszählung",
    "Fahrzeuge",
    "Radverkehr",
    "Fußgänger",
    "Straße",
    "Brücke",
    "Haltestelle",
    "Straßenbahn",
    "U-Bahn",
    "Bus",
    "Parkplätze",
    "Anwohnerparken",
    "Stromverbrauch",
    "Stromzähler",
    "Fernwärme",
    "Gasnetz",
    "Wasserversorgung",
    "Abwasser",
    "Müllabfuhr",
    "Wertstoffhof",
    "Grünflächen",
    "Bäume",
    "Spielplätze",
    "Schulen",
    "Kindergärten",
    "Bibliotheken",
    "Bevölkerung",
    "Haushalte",
    "Wahlergebnisse",
    "Bezirksausschuss",
    "Stadtrat",
    "Haushaltsplan",
    "Baugenehmigungen",
    "Bebauungsplan",
    "Mietspiegel",
    "Wohnungsbau",
    "Lärmkarte",
    "Temperatur",
    "Niederschlag",
    "Hochwasser",
    "Isar",
    "Pegelstand",
    "Solaranlagen",
    "Ladestationen",
    "Elektromobilität",
    "Carsharing",
    "E-Scooter",
    "Fahrradverleih",
    "Unfallstatistik",
    "Baustellen",
    "Sperrungen",
    "Veranstaltungen",
    "Tourismus",
    "Übernachtungen",
    "Gewerbe",
    "Arbeitsmarkt",
    "Gesundheit",
    "Krankenhäuser",
    "Apotheken",
    "Energieeffizienz",
    "Klimaschutz",
    "CO2-Bilanz",
    "Sensoren",
    "LoRaWAN",
    "Messwerte",
    "stündlich",
    "täglich",
    "monatlich",
    "Jahreswerte",
    "München",
    "Schwabing",
    "Sendling",
    "Pasing",
    "Bogenhausen",
    "Giesing",
    "Maxvorstadt",
    "Au-Haidhausen",
    "Neuhausen",
    "Moosach",
    "Daten",
    "Zeitreihe",
    "Auswertung",
    "Statistik",
    "Verzeichnis",
    "Karte",
    "Register",
    "öffentlich",
    "anonymisiert",
    "aggregiert",
    "Erhebung",
    "Zählstelle",
    "Quartier",
    "Viertel",
];

const ORGS: &[&str] = &[
    "stadt",
    "swm",
    "tum",
    "lmu",
    "hm",
    "mvg",
    "scooter-co",
    "bike-co",
    "awm",
    "msw",
    "lhm-kvr",
    "lhm-rgu",
    "lhm-mor",
    "lhm-bau",
    "dwd",
    "lfu",
    "stadtwerke-x",
    "uni-y",
    "verkehrsverbund",
    "energie-genossenschaft",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn words(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn entries() -> Vec<CatalogEntry> {
    let mut rng = Rng(0x5EED_CA7A_1065);
    (0..ENTRIES)
        .map(|i| {
            let owner = ORGS[rng.below(ORGS.len())];
            let theme = Theme::ALL[rng.below(Theme::ALL.len())];
            let public = rng.below(3) > 0;
            let title_len = 3 + rng.below(4);
            let desc_len = 30 + rng.below(40);
            let kw = 3 + rng.below(4);
            CatalogEntry {
                owner: owner.into(),
                owner_node: format!("{owner}-1"),
                publisher_name: owner.into(),
                version: i as u64 + 1,
                updated_at_ms: 1_741_000_000_000,
                dataset: DatasetDescription {
                    id: format!("dataset-{i:05}"),
                    title: rng.words(title_len),
                    description: rng.words(desc_len),
                    language: "de".into(),
                    licence: if public {
                        "dl-de-by-2.0"
                    } else {
                        "other-closed"
                    }
                    .into(),
                    themes: [theme].into(),
                    keywords: (0..kw).map(|_| rng.words(1)).collect(),
                    spatial: None,
                    temporal: None,
                    contact_point: None,
                    access_rights: if public {
                        AccessRights::Public
                    } else {
                        AccessRights::NonPublic
                    },
                    legal_basis: if public {
                        LegalBasis::NotApplicable
                    } else {
                        LegalBasis::Consent
                    },
                    classification: if public {
                        Classification::Public
                    } else {
                        Classification::Personal
                    },
                    contains_personal_data: !public,
                    public_space_origin: public,
                    allowed_purposes: Default::default(),
                    anonymisation_required: false,
                    update_frequency: Frequency::Daily,
                    schema: DatasetSchema {
                        fields: vec![
                            FieldSpec::required("id", FieldType::String),
                            FieldSpec::new("value", FieldType::Float64),
                        ],
                        subject_column: Some("id".into()),
                        identifier_columns: vec![],
                        quasi_identifier_columns: vec![],
                        filterable_columns: vec![],
                    },
                    access_url: None,
                },
            }
        })
        .collect()
}

fn queries() -> Vec<(&'static str, SearchQuery)> {
    vec![
        ("one_word", SearchQuery::text("luftqualitaet")),
        ("umlaut_word", SearchQuery::text("Fußgänger")),
        ("two_words", SearchQuery::text("strom münchen")),
        ("substring", SearchQuery::text("zaehler")),
        ("short_prefix", SearchQuery::text("st")),
        (
            "filters_only",
            SearchQuery {
                owner: Some("swm".into()),
                theme: Some(Theme::Energy),
                ..SearchQuery::default()
            },
        ),
        (
            "word_and_classification",
            SearchQuery {
                classification: Some(Classification::Public),
                ..SearchQuery::text("sensoren")
            },
        ),
        ("everything", SearchQuery::text("")),
        ("no_match", SearchQuery::text("quantencomputer")),
    ]
}

fn bench(c: &mut Criterion) {
    let entries = entries();
    let index = SearchIndex::build(&entries);
    assert_eq!(index.len(), ENTRIES);
    // The two must agree before their speed is compared.
    for (name, q) in queries() {
        let all = SearchQuery {
            limit: Some(allmende::catalog::search::MAX_LIMIT),
            ..q.clone()
        };
        let hits = index.search(&all);
        let naive = naive_search(&entries, &all);
        assert_eq!(hits.total, naive.len(), "{name}");
    }
    let mut g = c.benchmark_group("catalog_search_10k");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, q) in queries() {
        g.bench_with_input(BenchmarkId::new("index", name), &q, |b, q| {
            b.iter(|| black_box(index.search(black_box(q))))
        });
        g.bench_with_input(BenchmarkId::new("naive_scan", name), &q, |b, q| {
            b.iter(|| black_box(naive_search(black_box(&entries), black_box(q))))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("catalog_index_10k");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("build", |b| {
        b.iter(|| black_box(SearchIndex::build(&entries)))
    });
    g.bench_function("upsert_one", |b| {
        let mut idx = SearchIndex::build(&entries);
        let mut e = entries[0].clone();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            e.dataset.title = format!("Neuer Titel {n}");
            idx.upsert(black_box(&e));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
