//! Catalog descriptions of the Munich demo datasets (the brief's federation),
//! with schemas that match the connectors over
//! `allmende_connectors::sample` data. The demo and the tests register these.

use crate::catalog::entry::{
    AccessRights, ContactPoint, DatasetDescription, DatasetSchema, Frequency, Spatial, Temporal,
    Theme,
};
use allmende_connectors::sample;
use allmende_connectors::{FieldSpec, FieldType};
use allmende_policies::{Classification, LegalBasis, Purpose};

/// The dcat-ap.de political geocoding of the city of Munich.
pub const MUNICH_IRI: &str = "http://dcat-ap.de/def/politicalGeocoding/municipalityKey/091620000";

fn munich() -> Option<Spatial> {
    Some(Spatial {
        label: "München".into(),
        iri: Some(MUNICH_IRI.into()),
    })
}

fn from(start: &str) -> Option<Temporal> {
    Some(Temporal {
        start: Some(start.into()),
        end: None,
    })
}

fn contact(name: &str, email: &str) -> Option<ContactPoint> {
    Some(ContactPoint {
        name: name.into(),
        email: Some(email.into()),
        url: None,
    })
}

/// `swm`: smart-meter readings of households (personal, consent-based).
pub fn smart_meter_readings() -> DatasetDescription {
    DatasetDescription {
        id: "smart-meter-readings".into(),
        title: "Smart-Meter-Messwerte der Haushalte".into(),
        description: "Viertelstündliche Stromverbrauchswerte (kWh) der Münchner Haushalte mit \
                      intelligentem Messsystem, je Zähler und Stadtbezirk. Personenbezogen: \
                      Zeilen verlassen die SWM nur mit Einwilligung der Haushalte, pseudonymisiert."
            .into(),
        language: "de".into(),
        licence: "other-closed".into(),
        themes: [Theme::Energy].into(),
        keywords: vec![
            "Strom".into(),
            "Stromzähler".into(),
            "Smart Meter".into(),
            "Energieverbrauch".into(),
        ],
        spatial: munich(),
        temporal: from("2025-03-03"),
        contact_point: contact("SWM Datenschutz", "datenschutz@swm.example"),
        access_rights: AccessRights::NonPublic,
        legal_basis: LegalBasis::Consent,
        classification: Classification::Personal,
        contains_personal_data: true,
        public_space_origin: false,
        allowed_purposes: [Purpose::AcademicResearch, Purpose::ServiceProvision].into(),
        anonymisation_required: false,
        update_frequency: Frequency::Daily,
        schema: DatasetSchema {
            fields: sample::smart_meter_fields(),
            subject_column: Some("household_id".into()),
            identifier_columns: vec!["meter_id".into()],
            // The district (with the reading's time) can single a household
            // out; SWM allows time-range filters, not district filters.
            quasi_identifier_columns: vec!["timestamp".into(), "district".into()],
            filterable_columns: vec!["timestamp".into()],
        },
        access_url: None,
    }
}

/// A dataset of the city's open data from public space: public,
/// hourly, no personal data, under the Datenlizenz Deutschland.
fn city_open_data(
    id: &str,
    title: &str,
    description: &str,
    themes: &[Theme],
    keywords: &[&str],
    contact_point: Option<ContactPoint>,
    fields: Vec<FieldSpec>,
) -> DatasetDescription {
    DatasetDescription {
        id: id.into(),
        title: title.into(),
        description: description.into(),
        language: "de".into(),
        licence: "dl-de-by-2.0".into(),
        themes: themes.iter().copied().collect(),
        keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
        spatial: munich(),
        temporal: from("2025-03-03"),
        contact_point,
        access_rights: AccessRights::Public,
        legal_basis: LegalBasis::NotApplicable,
        classification: Classification::Public,
        contains_personal_data: false,
        public_space_origin: true,
        allowed_purposes: Default::default(),
        anonymisation_required: false,
        update_frequency: Frequency::Hourly,
        schema: DatasetSchema {
            fields,
            subject_column: None,
            identifier_columns: vec![],
            quasi_identifier_columns: vec![],
            filterable_columns: vec![],
        },
        access_url: None,
    }
}

/// `stadt`: hourly air quality at the LÜB stations (public space, open data).
pub fn air_quality() -> DatasetDescription {
    city_open_data(
        "air-quality",
        "Luftqualität an den Münchner LÜB-Messstationen",
        "Stündliche Messwerte von Stickstoffdioxid (NO2), Feinstaub PM10 und PM2,5 \
         in µg/m³ an fünf Stationen des Lufthygienischen Landesüberwachungssystems \
         Bayern in München.",
        &[Theme::Environment, Theme::Health],
        &["Luftqualität", "Stickstoffdioxid", "Feinstaub"],
        contact(
            "Referat für Klima- und Umweltschutz",
            "umwelt@muenchen.example",
        ),
        sample::air_quality_fields(),
    )
}

/// `stadt`: hourly vehicle counts (public space, open data; GeoJSON points).
pub fn traffic_counts() -> DatasetDescription {
    let mut fields = sample::traffic_counts_geojson_fields();
    // The GeoJSON connector exposes the point as a WKT column.
    fields.push(FieldSpec::required("geometry", FieldType::String));
    city_open_data(
        "traffic-counts",
        "Verkehrszählung an Dauerzählstellen",
        "Stündliche Kfz-Zählungen an sechs Dauerzählstellen im Münchner \
         Straßennetz, mit Lage der Zählstelle.",
        &[Theme::Transport],
        &["Verkehr", "Zählstelle", "Kfz"],
        contact("Mobilitätsreferat", "mobilitaet@muenchen.example"),
        fields,
    )
}

/// `scooter-co`: MDS trips delivered to the city (personal-derived:
/// anonymised aggregates only).
pub fn scooter_trips() -> DatasetDescription {
    DatasetDescription {
        id: "scooter-trips".into(),
        title: "E-Scooter-Fahrten (MDS)".into(),
        description: "Fahrten der Leih-E-Scooter nach Mobility Data Specification, stündlich an \
                      die Stadt geliefert. Nur als anonymisierte Aggregate (k ≥ 10) nutzbar."
            .into(),
        language: "de".into(),
        licence: "other-closed".into(),
        themes: [Theme::Transport].into(),
        keywords: vec!["E-Scooter".into(), "MDS".into(), "Mikromobilität".into()],
        spatial: munich(),
        temporal: from("2025-03-03"),
        contact_point: contact("Scooter Co. Datenschutz", "privacy@scooter-co.example"),
        access_rights: AccessRights::Restricted,
        legal_basis: LegalBasis::LegalObligation,
        classification: Classification::Personal,
        contains_personal_data: true,
        public_space_origin: true,
        allowed_purposes: [Purpose::PublicInterest, Purpose::AcademicResearch].into(),
        anonymisation_required: true,
        update_frequency: Frequency::Hourly,
        schema: DatasetSchema {
            fields: sample::scooter_trip_fields(),
            // Trips name no person; the device id identifies (pseudonymised
            // on release). Not consent-based, so no subject column.
            subject_column: None,
            identifier_columns: vec!["device_id".into()],
            // Where and when a trip started and ended can single its rider
            // out; no filter on them.
            quasi_identifier_columns: [
                "start_time",
                "end_time",
                "start_lat",
                "start_lon",
                "end_lat",
                "end_lon",
                "start_cell",
                "end_cell",
            ]
            .map(String::from)
            .to_vec(),
            filterable_columns: vec![],
        },
        access_url: None,
    }
}

/// `swm`: the LoRaWAN environment sensors (public space, open data), fed
/// by MQTT uplinks in the demo (`demo::lorawan`); registered by the running
/// demo only, so it is not among [`datasets`].
pub fn lorawan_environment() -> DatasetDescription {
    let mut d = city_open_data(
        "lorawan-environment",
        "LoRaWAN-Umweltsensoren der SWM",
        "Temperatur (°C), relative Luftfeuchte (%) und Feinstaub PM10 (µg/m³) der \
         LoRaWAN-Umweltsensoren der Stadtwerke München, viertelstündlich über The \
         Things Stack empfangen.",
        &[Theme::Environment],
        &["LoRaWAN", "Sensoren", "Temperatur", "Feinstaub"],
        contact("SWM Smart City", "smartcity@swm.example"),
        allmende_connectors::mqtt::recorded::environment_fields(),
    );
    d.update_frequency = Frequency::Continuous;
    d
}

/// Every demo dataset with its owner organisation.
pub fn datasets() -> Vec<(&'static str, DatasetDescription)> {
    vec![
        ("swm", smart_meter_readings()),
        ("stadt", air_quality()),
        ("stadt", traffic_counts()),
        ("scooter-co", scooter_trips()),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "test"
    )]
    use super::*;
    use allmende_connectors::{Connector, FileConnector};

    #[test]
    fn descriptions_are_valid_and_match_the_sample_connectors() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample::write_demo_data(dir.path(), &sample::SampleSpec::default()).unwrap();
        for (_, d) in datasets() {
            assert_eq!(d.problems(), Vec::<String>::new(), "{}", d.id);
            let sample = files
                .dataset(&d.id)
                .expect("sample data for every demo dataset");
            let roots = allmende_connectors::SourceRoots::new([dir.path()]);
            let connector = FileConnector::open(sample.config.clone(), roots).unwrap();
            let desc = connector.describe();
            allmende_connectors::schema::check_declared_schema(&d.schema.fields, &desc.schema)
                .unwrap_or_else(|e| panic!("{}: {e}", d.id));
            assert_eq!(
                d.schema.identifier_columns, desc.identifier_columns,
                "{}",
                d.id
            );
            assert_eq!(d.schema.subject_column, desc.subject_column, "{}", d.id);
        }
    }
}
