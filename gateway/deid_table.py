"""PS3.15 Table E.1-1, Application Level Confidentiality Profile Attributes, as data.

Generated from the shared copy `standard/confidentiality_profile_attributes.json`
(innolitics/dicom-standard's parse of the standard; MIT), SHA-256
a99a35d1278e2bace8d90ff791b11aea2d45f1e3e1230388eb5224c9dbcd29e6. That copy names no edition:
it is the standard that was current when innolitics regenerated it, some time after March 2024
(it has their fix 7008b61: Referenced Patient Sequence is K under Retain UIDs). 621 rows.
`tests/test_deidentify.py` checks that this table still equals the shared JSON and shows how
to regenerate it.

One row a line: tag, Basic Profile action, then one character per option column in the order
of `OPTION_COLUMNS` ("." where the option does not change the action), then the name.
`(50XX,XXXX)` and `(60XX,eeee)` are repeating groups; `(GGGG,EEEE)` stands for every private
attribute (odd group).
"""

OPTION_COLUMNS = (
    "rtnSafePrivOpt",
    "rtnUIDsOpt",
    "rtnDevIdOpt",
    "rtnInstIdOpt",
    "rtnPatCharsOpt",
    "rtnLongFullDatesOpt",
    "rtnLongModifDatesOpt",
    "cleanDescOpt",
    "cleanStructContOpt",
    "cleanGraphOpt",
)

TABLE_E1_1 = """\
(0000,1000) X      .K........ Affected SOP Instance UID
(0000,1001) U      .K........ Requested SOP Instance UID
(0002,0003) U      .K........ Media Storage SOP Instance UID
(0004,1511) U      .K........ Referenced SOP Instance UID in File
(0008,0012) X/D    .....KC... Instance Creation Date
(0008,0013) X/Z/D  .....KC... Instance Creation Time
(0008,0014) U      .K........ Instance Creator UID
(0008,0015) X      .....KC... Instance Coercion DateTime
(0008,0017) U      .K........ Acquisition UID
(0008,0018) U      .K........ SOP Instance UID
(0008,0019) U      .K........ Pyramid UID
(0008,0020) Z      .....KC... Study Date
(0008,0021) X/D    .....KC... Series Date
(0008,0022) X/Z    .....KC... Acquisition Date
(0008,0023) Z/D    .....KC... Content Date
(0008,0024) X      .....KC... Overlay Date
(0008,0025) X      .....KC... Curve Date
(0008,002A) X/Z/D  .....KC... Acquisition DateTime
(0008,0030) Z      .....KC... Study Time
(0008,0031) X/D    .....KC... Series Time
(0008,0032) X/Z    .....KC... Acquisition Time
(0008,0033) Z/D    .....KC... Content Time
(0008,0034) X      .....KC... Overlay Time
(0008,0035) X      .....KC... Curve Time
(0008,0050) Z      .......... Accession Number
(0008,0054) X      ..C....... Retrieve AE Title
(0008,0055) X      ..C....... Station AE Title
(0008,0058) U      .K........ Failed SOP Instance UID List
(0008,0080) X/Z/D  ...K...... Institution Name
(0008,0081) X      ...K...... Institution Address
(0008,0082) X/Z/D  ...K...... Institution Code Sequence
(0008,0090) Z      .......... Referring Physician's Name
(0008,0092) X      .......... Referring Physician's Address
(0008,0094) X      .......... Referring Physician's Telephone Numbers
(0008,0096) X      .......... Referring Physician Identification Sequence
(0008,009C) Z      .......... Consulting Physician's Name
(0008,009D) X      .......... Consulting Physician Identification Sequence
(0008,0106) D      .....KC... Context Group Version
(0008,0107) D      .....KC... Context Group Local Version
(0008,0201) X      .....KC... Timezone Offset From UTC
(0008,1000) X      ..C....... Network ID
(0008,1010) X/Z/D  ..K....... Station Name
(0008,1030) X      .......C.. Study Description
(0008,103E) X      .......C.. Series Description
(0008,1040) X      ...K...... Institutional Department Name
(0008,1041) X      ...K...... Institutional Department Type Code Sequence
(0008,1048) X      .......... Physician(s) of Record
(0008,1049) X      .......... Physician(s) of Record Identification Sequence
(0008,1050) X      .......... Performing Physician's Name
(0008,1052) X      .......... Performing Physician Identification Sequence
(0008,1060) X      .......... Name of Physician(s) Reading Study
(0008,1062) X      .......... Physician(s) Reading Study Identification Sequence
(0008,1070) X/Z/D  .......... Operators' Name
(0008,1072) X/D    .......... Operator Identification Sequence
(0008,1080) X      .......C.. Admitting Diagnoses Description
(0008,1084) X      .......C.. Admitting Diagnoses Code Sequence
(0008,1088) X      .......C.. Pyramid Description
(0008,1110) X/Z    .K........ Referenced Study Sequence
(0008,1111) X/Z/D  .K........ Referenced Performed Procedure Step Sequence
(0008,1120) X      .K........ Referenced Patient Sequence
(0008,1140) X/Z/U* .K........ Referenced Image Sequence
(0008,1155) U      .K........ Referenced SOP Instance UID
(0008,1195) U      .K........ Transaction UID
(0008,2111) X      .......C.. Derivation Description
(0008,2112) X/Z/U* .K........ Source Image Sequence
(0008,3010) U      .K........ Irradiation Event UID
(0008,4000) X      .......C.. Identifying Comments
(0010,0010) Z      .......... Patient's Name
(0010,0020) Z/D    .......... Patient ID
(0010,0021) X      .......... Issuer of Patient ID
(0010,0030) Z      .......... Patient's Birth Date
(0010,0032) X      .......... Patient's Birth Time
(0010,0040) Z      ....K..... Patient's Sex
(0010,0050) X      .......... Patient's Insurance Plan Code Sequence
(0010,0101) X      .......... Patient's Primary Language Code Sequence
(0010,0102) X      .......... Patient's Primary Language Modifier Code Sequence
(0010,1000) X      .......... Other Patient IDs
(0010,1001) X      .......... Other Patient Names
(0010,1002) X      .......... Other Patient IDs Sequence
(0010,1005) X      .......... Patient's Birth Name
(0010,1010) X      ....K..... Patient's Age
(0010,1020) X      ....K..... Patient's Size
(0010,1030) X      ....K..... Patient's Weight
(0010,1040) X      .......... Patient's Address
(0010,1050) X      .......... Insurance Plan Identification
(0010,1060) X      .......... Patient's Mother's Birth Name
(0010,1080) X      .......... Military Rank
(0010,1081) X      .......... Branch of Service
(0010,1090) X      .......... Medical Record Locator
(0010,1100) X      .......... Referenced Patient Photo Sequence
(0010,2000) X      .......C.. Medical Alerts
(0010,2110) X      ....C..C.. Allergies
(0010,2150) X      .......... Country of Residence
(0010,2152) X      .......... Region of Residence
(0010,2154) X      .......... Patient's Telephone Numbers
(0010,2155) X      .......... Patient's Telecom Information
(0010,2160) X      ....K..... Ethnic Group
(0010,2180) X      .......C.. Occupation
(0010,21A0) X      ....K..... Smoking Status
(0010,21B0) X      .......C.. Additional Patient History
(0010,21C0) X      ....K..... Pregnancy Status
(0010,21D0) X      .....KC... Last Menstrual Date
(0010,21F0) X      .......... Patient's Religious Preference
(0010,2203) X/Z    ....K..... Patient's Sex Neutered
(0010,2297) X      .......... Responsible Person
(0010,2299) X      .......... Responsible Organization
(0010,4000) X      .......C.. Patient Comments
(0012,0010) D      .......... Clinical Trial Sponsor Name
(0012,0020) D      .......... Clinical Trial Protocol ID
(0012,0021) Z      .......... Clinical Trial Protocol Name
(0012,0022) X      .......... Issuer of Clinical Trial Protocol ID
(0012,0023) X      .......... Other Clinical Trial Protocol IDs Sequence
(0012,0030) Z      ...K...... Clinical Trial Site ID
(0012,0031) Z      ...K...... Clinical Trial Site Name
(0012,0032) X      .......... Issuer of Clinical Trial Site ID
(0012,0040) D      .......... Clinical Trial Subject ID
(0012,0041) X      .......... Issuer of Clinical Trial Subject ID
(0012,0042) D      .......... Clinical Trial Subject Reading ID
(0012,0043) X      .......... Issuer of Clinical Trial Subject Reading ID
(0012,0050) Z      .......... Clinical Trial Time Point ID
(0012,0051) X      .......C.. Clinical Trial Time Point Description
(0012,0055) X      .......... Issuer of Clinical Trial Time Point ID
(0012,0060) Z      ...K...... Clinical Trial Coordinating Center Name
(0012,0071) X      .......... Clinical Trial Series ID
(0012,0072) X      .......C.. Clinical Trial Series Description
(0012,0073) X      .......... Issuer of Clinical Trial Series ID
(0012,0081) D      ...K...... Clinical Trial Protocol Ethics Committee Name
(0012,0082) X      .......... Clinical Trial Protocol Ethics Committee Approval Number
(0012,0086) X      .....KC... Ethics Committee Approval Effectiveness Start Date
(0012,0087) X      .....KC... Ethics Committee Approval Effectiveness End Date
(0014,407C) X      ..K..KC... Calibration Time
(0014,407E) X      ..K..KC... Calibration Date
(0016,002B) X      .......C.. Maker Note
(0016,004B) X      .......C.. Device Setting Description
(0016,004D) X      .......... Camera Owner Name
(0016,004E) X      ..K....... Lens Specification
(0016,004F) X      ..K....... Lens Make
(0016,0050) X      ..K....... Lens Model
(0016,0051) X      ..K....... Lens Serial Number
(0016,0070) X      .......... GPS Version ID
(0016,0071) X      .......... GPS Latitude Ref
(0016,0072) X      .......... GPS Latitude
(0016,0073) X      .......... GPS Longitude Ref
(0016,0074) X      .......... GPS Longitude
(0016,0075) X      .......... GPS Altitude Ref
(0016,0076) X      .......... GPS Altitude
(0016,0077) X      .......... GPS Time Stamp
(0016,0078) X      .......... GPS Satellites
(0016,0079) X      .......... GPS Status
(0016,007A) X      .......... GPS Measure Mode
(0016,007B) X      .......... GPS DOP
(0016,007C) X      .......... GPS Speed Ref
(0016,007D) X      .......... GPS Speed
(0016,007E) X      .......... GPS Track Ref
(0016,007F) X      .......... GPS Track
(0016,0080) X      .......... GPS Img Direction Ref
(0016,0081) X      .......... GPS Img Direction
(0016,0082) X      .......... GPS Map Datum
(0016,0083) X      .......... GPS Dest Latitude Ref
(0016,0084) X      .......... GPS Dest Latitude
(0016,0085) X      .......... GPS Dest Longitude Ref
(0016,0086) X      .......... GPS Dest Longitude
(0016,0087) X      .......... GPS Dest Bearing Ref
(0016,0088) X      .......... GPS Dest Bearing
(0016,0089) X      .......... GPS Dest Distance Ref
(0016,008A) X      .......... GPS Dest Distance
(0016,008B) X      .......... GPS Processing Method
(0016,008C) X      .......... GPS Area Information
(0016,008D) X      .....KC... GPS Date Stamp
(0016,008E) X      .......... GPS Differential
(0018,0010) Z/D    .......C.. Contrast/Bolus Agent
(0018,0027) X      .....KC... Intervention Drug Stop Time
(0018,0035) X      .....KC... Intervention Drug Start Time
(0018,1000) X/Z/D  ..K....... Device Serial Number
(0018,1002) U      .KK....... Device UID
(0018,1004) X      ..K....... Plate ID
(0018,1005) X      ..K....... Generator ID
(0018,1007) X      ..K....... Cassette ID
(0018,1008) X      ..K....... Gantry ID
(0018,1009) X      ..K....... Unique Device Identifier
(0018,100A) X      ..K....... UDI Sequence
(0018,100B) U      .KK....... Manufacturer's Device Class UID
(0018,1012) X      .....KC... Date of Secondary Capture
(0018,1014) X      .....KC... Time of Secondary Capture
(0018,1030) X/D    .......C.. Protocol Name
(0018,1042) X      .....KC... Contrast/Bolus Start Time
(0018,1043) X      .....KC... Contrast/Bolus Stop Time
(0018,1072) X      .....KC... Radiopharmaceutical Start Time
(0018,1073) X      .....KC... Radiopharmaceutical Stop Time
(0018,1078) X      .....KC... Radiopharmaceutical Start DateTime
(0018,1079) X      .....KC... Radiopharmaceutical Stop DateTime
(0018,11BB) D      .......C.. Acquisition Field Of View Label
(0018,1200) X      ..K..KC... Date of Last Calibration
(0018,1201) X      ..K..KC... Time of Last Calibration
(0018,1202) X      ..K..KC... DateTime of Last Calibration
(0018,1203) Z      ..K..KC... Calibration DateTime
(0018,1204) X      ..K..KC... Date of Manufacture
(0018,1205) X      ..K..KC... Date of Installation
(0018,1400) X/D    .......C.. Acquisition Device Processing Description
(0018,2042) U      .K........ Target UID
(0018,4000) X      .......C.. Acquisition Comments
(0018,5011) X      ..K....... Transducer Identification Sequence
(0018,700A) X/D    ..K....... Detector ID
(0018,700C) X/D    ..K..KC... Date of Last Detector Calibration
(0018,700E) X/D    ..K..KC... Time of Last Detector Calibration
(0018,9074) D      .....KC... Frame Acquisition DateTime
(0018,9151) D      .....KC... Frame Reference DateTime
(0018,9185) X      .......C.. Respiratory Motion Compensation Technique Description
(0018,9367) D      ..K....... X-Ray Source ID
(0018,9369) D      .....KC... Source Start DateTime
(0018,936A) D      .....KC... Source End DateTime
(0018,9371) D      ..K....... X-Ray Detector ID
(0018,9373) X      ..K....... X-Ray Detector Label
(0018,937B) X      .......C.. Multi-energy Acquisition Description
(0018,937F) X      .......C.. Decomposition Description
(0018,9424) X      .......C.. Acquisition Protocol Description
(0018,9516) X/D    .....KC... Start Acquisition DateTime
(0018,9517) X/D    .....KC... End Acquisition DateTime
(0018,9623) D      .....KC... Functional Sync Pulse
(0018,9701) D      .....KC... Decay Correction DateTime
(0018,9804) D      .....KC... Exclusion Start DateTime
(0018,9919) Z/D    .....KC... Instruction Performed DateTime
(0018,9937) X      .......C.. Requested Series Description
(0018,A002) X      .....KC... Contribution DateTime
(0018,A003) X      .......C.. Contribution Description
(0020,000D) U      .K........ Study Instance UID
(0020,000E) U      .K........ Series Instance UID
(0020,0010) Z      .......... Study ID
(0020,0027) X      .......C.. Pyramid Label
(0020,0052) U      .K........ Frame of Reference UID
(0020,0200) U      .K........ Synchronization Frame of Reference UID
(0020,3401) X      ..K....... Modifying Device ID
(0020,3403) X      .....KC... Modified Image Date
(0020,3405) X      .....KC... Modified Image Time
(0020,3406) X      .......... Modified Image Description
(0020,4000) X      .......C.. Image Comments
(0020,9158) X      .......C.. Frame Comments
(0020,9161) U      .K........ Concatenation UID
(0020,9164) U      .K........ Dimension Organization UID
(0028,1199) U      .K........ Palette Color Lookup Table UID
(0028,1214) U      .K........ Large Palette Color Lookup Table UID
(0028,4000) X      .......... Image Presentation Comments
(0032,0012) X      .......... Study ID Issuer
(0032,0032) X      .....KC... Study Verified Date
(0032,0033) X      .....KC... Study Verified Time
(0032,0034) X      .....KC... Study Read Date
(0032,0035) X      .....KC... Study Read Time
(0032,1000) X      .....KC... Scheduled Study Start Date
(0032,1001) X      .....KC... Scheduled Study Start Time
(0032,1010) X      .....KC... Scheduled Study Stop Date
(0032,1011) X      .....KC... Scheduled Study Stop Time
(0032,1020) X      ..K....... Scheduled Study Location
(0032,1021) X      ..C....... Scheduled Study Location AE Title
(0032,1030) X      .......C.. Reason for Study
(0032,1032) X      .......... Requesting Physician
(0032,1033) X      .......... Requesting Service
(0032,1040) X      .....KC... Study Arrival Date
(0032,1041) X      .....KC... Study Arrival Time
(0032,1050) X      .....KC... Study Completion Date
(0032,1051) X      .....KC... Study Completion Time
(0032,1060) X/Z    .......C.. Requested Procedure Description
(0032,1066) X      .......C.. Reason for Visit
(0032,1067) X      .......C.. Reason for Visit Code Sequence
(0032,1070) X      .......C.. Requested Contrast Agent
(0032,4000) X      .......C.. Study Comments
(0034,0001) D      .......... Flow Identifier Sequence
(0034,0002) D      .......... Flow Identifier
(0034,0005) D      .......... Source Identifier
(0034,0007) D      .....KC... Frame Origin Timestamp
(0038,0004) X      .......... Referenced Patient Alias Sequence
(0038,0010) X      .......... Admission ID
(0038,0011) X      .......... Issuer of Admission ID
(0038,0014) X      .......... Issuer of Admission ID Sequence
(0038,001A) X      .....KC... Scheduled Admission Date
(0038,001B) X      .....KC... Scheduled Admission Time
(0038,001C) X      .....KC... Scheduled Discharge Date
(0038,001D) X      .....KC... Scheduled Discharge Time
(0038,001E) X      .......... Scheduled Patient Institution Residence
(0038,0020) X      .....KC... Admitting Date
(0038,0021) X      .....KC... Admitting Time
(0038,0030) X      .....KC... Discharge Date
(0038,0032) X      .....KC... Discharge Time
(0038,0040) X      .......C.. Discharge Diagnosis Description
(0038,0050) X      ....C..... Special Needs
(0038,0060) X      .......... Service Episode ID
(0038,0061) X      .......... Issuer of Service Episode ID
(0038,0062) X      .......C.. Service Episode Description
(0038,0064) X      .......... Issuer of Service Episode ID Sequence
(0038,0300) X      .......... Current Patient Location
(0038,0400) X      .......... Patient's Institution Residence
(0038,0500) X      ....C..C.. Patient State
(0038,4000) X      .......C.. Visit Comments
(003A,0310) U      .K........ Multiplex Group UID
(003A,0314) D      .....KC... Impedance Measurement DateTime
(003A,0329) X      .......C.. Waveform Filter Description
(003A,032B) X      .......C.. Filter Lookup Table Description
(0040,0001) X      ..C....... Scheduled Station AE Title
(0040,0002) X      .....KC... Scheduled Procedure Step Start Date
(0040,0003) X      .....KC... Scheduled Procedure Step Start Time
(0040,0004) X      .....KC... Scheduled Procedure Step End Date
(0040,0005) X      .....KC... Scheduled Procedure Step End Time
(0040,0006) X      .......... Scheduled Performing Physician's Name
(0040,0007) X      .......C.. Scheduled Procedure Step Description
(0040,0009) X      .......... Scheduled Procedure Step ID
(0040,000B) X      .......... Scheduled Performing Physician Identification Sequence
(0040,0010) X      ..K....... Scheduled Station Name
(0040,0011) X      ..K....... Scheduled Procedure Step Location
(0040,0012) X      ....C..... Pre-Medication
(0040,0241) X      ..C....... Performed Station AE Title
(0040,0242) X      ..K....... Performed Station Name
(0040,0243) X      .......... Performed Location
(0040,0244) X      .....KC... Performed Procedure Step Start Date
(0040,0245) X      .....KC... Performed Procedure Step Start Time
(0040,0250) X      .....KC... Performed Procedure Step End Date
(0040,0251) X      .....KC... Performed Procedure Step End Time
(0040,0253) X      .......... Performed Procedure Step ID
(0040,0254) X      .......C.. Performed Procedure Step Description
(0040,0275) X      .......C.. Request Attributes Sequence
(0040,0280) X      .......C.. Comments on the Performed Procedure Step
(0040,0310) X      .......C.. Comments on Radiation Dose
(0040,050A) X      .......... Specimen Accession Number
(0040,0512) D      .......... Container Identifier
(0040,0513) Z      .......... Issuer of the Container Identifier Sequence
(0040,051A) X      .......C.. Container Description
(0040,0551) D      .......... Specimen Identifier
(0040,0554) U      .K........ Specimen UID
(0040,0555) X/Z    ........C. Acquisition Context Sequence
(0040,0562) Z      .......... Issuer of the Specimen Identifier Sequence
(0040,0600) X      .......C.. Specimen Short Description
(0040,0602) X      .......C.. Specimen Detailed Description
(0040,0610) Z      ........C. Specimen Preparation Sequence
(0040,06FA) X      .......... Slide Identifier
(0040,1001) X      .......... Requested Procedure ID
(0040,1002) X      .......C.. Reason for the Requested Procedure
(0040,1004) X      .......... Patient Transport Arrangements
(0040,1005) X      .......... Requested Procedure Location
(0040,100A) X      .......C.. Reason for Requested Procedure Code Sequence
(0040,1010) X      .......... Names of Intended Recipients of Results
(0040,1011) X      .......... Intended Recipients of Results Identification Sequence
(0040,1101) D      .......... Person Identification Code Sequence
(0040,1102) X      .......... Person's Address
(0040,1103) X      .......... Person's Telephone Numbers
(0040,1104) X      .......... Person's Telecom Information
(0040,1400) X      .......C.. Requested Procedure Comments
(0040,2001) X      .......C.. Reason for the Imaging Service Request
(0040,2004) X      .....KC... Issue Date of Imaging Service Request
(0040,2005) X      .....KC... Issue Time of Imaging Service Request
(0040,2008) X      .......... Order Entered By
(0040,2009) X      .......... Order Enterer's Location
(0040,2010) X      .......... Order Callback Phone Number
(0040,2011) X      .......... Order Callback Telecom Information
(0040,2016) Z      .......... Placer Order Number / Imaging Service Request
(0040,2017) Z      .......... Filler Order Number / Imaging Service Request
(0040,2400) X      .......C.. Imaging Service Request Comments
(0040,3001) X      .......... Confidentiality Constraint on Patient Data Description
(0040,4005) X      .....KC... Scheduled Procedure Step Start DateTime
(0040,4008) X      .....KC... Scheduled Procedure Step Expiration DateTime
(0040,4010) X      .....KC... Scheduled Procedure Step Modification DateTime
(0040,4011) X      .....KC... Expected Completion DateTime
(0040,4023) U      .K........ Referenced General Purpose Scheduled Procedure Step Transaction UID
(0040,4025) X      ..K....... Scheduled Station Name Code Sequence
(0040,4027) X      ..K....... Scheduled Station Geographic Location Code Sequence
(0040,4028) X      ..K....... Performed Station Name Code Sequence
(0040,4030) X      ..K....... Performed Station Geographic Location Code Sequence
(0040,4034) X      .......... Scheduled Human Performers Sequence
(0040,4035) X      .......... Actual Human Performers Sequence
(0040,4036) X      .......... Human Performer's Organization
(0040,4037) X      .......... Human Performer's Name
(0040,4050) X      .....KC... Performed Procedure Step Start DateTime
(0040,4051) X      .....KC... Performed Procedure Step End DateTime
(0040,4052) X      .....KC... Procedure Step Cancellation DateTime
(0040,A023) X      .....KC... Findings Group Recording Date (Trial)
(0040,A024) X      .....KC... Findings Group Recording Time (Trial)
(0040,A027) D      .......... Verifying Organization
(0040,A030) D      .....KC... Verification DateTime
(0040,A032) X/D    .....KC... Observation DateTime
(0040,A033) X      .....KC... Observation Start DateTime
(0040,A073) D      .......... Verifying Observer Sequence
(0040,A075) D      .......... Verifying Observer Name
(0040,A078) X      .......... Author Observer Sequence
(0040,A07A) X      .......... Participant Sequence
(0040,A07C) X      .......... Custodial Organization Sequence
(0040,A082) Z      .....KC... Participation DateTime
(0040,A088) Z      .......... Verifying Observer Identification Code Sequence
(0040,A110) X      .....KC... Date of Document or Verbal Transaction (Trial)
(0040,A112) X      .....KC... Time of Document Creation or Verbal Transaction (Trial)
(0040,A120) D      .....KC... DateTime
(0040,A121) D      .....KC... Date
(0040,A122) D      .....KC... Time
(0040,A123) D      .......... Person Name
(0040,A124) U      .......... UID
(0040,A13A) D      .....KC... Referenced DateTime
(0040,A171) U      .K........ Observation UID
(0040,A172) U      .K........ Referenced Observation UID (Trial)
(0040,A192) X      .....KC... Observation Date (Trial)
(0040,A193) X      .....KC... Observation Time (Trial)
(0040,A307) X      .......... Current Observer (Trial)
(0040,A352) X      .......... Verbal Source (Trial)
(0040,A353) X      .......... Address (Trial)
(0040,A354) X      .......... Telephone Number (Trial)
(0040,A358) X      .......... Verbal Source Identifier Code Sequence (Trial)
(0040,A402) U      .K........ Observation Subject UID (Trial)
(0040,A730) D      ........C. Content Sequence
(0040,DB06) X      .....KC... Template Version
(0040,DB07) X      .....KC... Template Local Version
(0040,DB0C) U      .K........ Template Extension Organization UID
(0040,DB0D) U      .K........ Template Extension Creator UID
(0040,E004) X      .....KC... HL7 Document Effective Time
(0042,0011) D      .......... Encapsulated Document
(0044,0004) X      .....KC... Approval Status DateTime
(0044,000B) X      .....KC... Product Expiration DateTime
(0044,0010) X      .....KC... Substance Administration DateTime
(0044,0104) D      .....KC... Assertion DateTime
(0044,0105) X      .....KC... Assertion Expiration DateTime
(0050,001B) X      .......... Container Component ID
(0050,0020) X      ..K....... Device Description
(0050,0021) X      .......C.. Long Device Description
(0062,0021) U      .K........ Tracking UID
(0064,0003) U      .K........ Source Frame of Reference UID
(0068,6226) D      .....KC... Effective DateTime
(0068,6270) D      .....KC... Information Issue DateTime
(006A,0003) D      .K........ Annotation Group UID
(006A,0005) D      .......C.. Annotation Group Label
(006A,0006) X      .......C.. Annotation Group Description
(0070,0001) D      .........C Graphic Annotation Sequence
(0070,0082) X      .....KC... Presentation Creation Date
(0070,0083) X      .....KC... Presentation Creation Time
(0070,0084) Z/D    .......... Content Creator's Name
(0070,0086) X      .......... Content Creator's Identification Code Sequence
(0070,031A) U      .K........ Fiducial UID
(0070,1101) U      .K........ Presentation Display Collection UID
(0070,1102) U      .K........ Presentation Sequence Collection UID
(0072,000A) D      .....KC... Hanging Protocol Creation DateTime
(0072,005E) D      ..C....... Selector AE Value
(0072,005F) D      ....K..... Selector AS Value
(0072,0061) D      .....KC... Selector DA Value
(0072,0063) D      .....KC... Selector DT Value
(0072,0065) D      .......... Selector OB Value
(0072,0066) D      .......C.. Selector LO Value
(0072,0068) D      .......C.. Selector LT Value
(0072,006A) D      .......... Selector PN Value
(0072,006B) D      .....KC... Selector TM Value
(0072,006C) D      .......C.. Selector SH Value
(0072,006D) D      .......... Selector UN Value
(0072,006E) D      .......C.. Selector ST Value
(0072,0070) D      .......C.. Selector UT Value
(0072,0071) D      .......... Selector UR Value
(0074,1234) X      ..C....... Receiving AE
(0074,1236) X      ..C....... Requesting AE
(0088,0140) U      .K........ Storage Media File-set UID
(0088,0200) X      .......... Icon Image Sequence (see Note 11)
(0088,0904) X      .......... Topic Title
(0088,0906) X      .......... Topic Subject
(0088,0910) X      .......... Topic Author
(0088,0912) X      .......... Topic Keywords
(0100,0420) X      .....KC... SOP Authorization DateTime
(0400,0100) U      .......... Digital Signature UID
(0400,0105) D      .....KC... Digital Signature DateTime
(0400,0115) D      .......... Certificate of Signer
(0400,0310) X      .....KC... Certified Timestamp
(0400,0402) X      .......... Referenced Digital Signature Sequence
(0400,0403) X      .......... Referenced SOP Instance MAC Sequence
(0400,0404) X      .......... MAC
(0400,0550) X      .......... Modified Attributes Sequence
(0400,0551) X      .......... Nonconforming Modified Attributes Sequence
(0400,0552) X      .......... Nonconforming Data Element Value
(0400,0561) X      .......... Original Attributes Sequence
(0400,0562) D      .....KC... Attribute Modification DateTime
(0400,0563) D      ..K....... Modifying System
(0400,0564) Z      ...K...... Source of Previous Values
(0400,0565) D      .......C.. Reason for the Attribute Modification
(0400,0600) X      .......... Instance Origin Status
(2030,0020) X      .......... Text String
(2100,0040) X      .....KC... Creation Date
(2100,0050) X      .....KC... Creation Time
(2100,0070) X      ..C....... Originator
(2100,0140) D      ..C....... Destination AE
(2200,0002) X/Z    .......C.. Label Text
(2200,0005) X/Z    .......... Barcode Value
(3002,0121) X      .......C.. Position Acquisition Template Name
(3002,0123) X      .......C.. Position Acquisition Template Description
(3006,0002) D      .......C.. Structure Set Label
(3006,0004) X      .......C.. Structure Set Name
(3006,0006) X      .......C.. Structure Set Description
(3006,0008) Z      .....KC... Structure Set Date
(3006,0009) Z      .....KC... Structure Set Time
(3006,0024) U      .K........ Referenced Frame of Reference UID
(3006,0026) Z      .......C.. ROI Name
(3006,0028) X      .......C.. ROI Description
(3006,002D) X      .....KC... ROI DateTime
(3006,002E) X      .....KC... ROI Observation DateTime
(3006,0038) X      .......C.. ROI Generation Description
(3006,004D) X      .......... ROI Creator Sequence
(3006,004E) X      .......... ROI Interpreter Sequence
(3006,0085) X      .......C.. ROI Observation Label
(3006,0088) X      .......C.. ROI Observation Description
(3006,00A6) Z      .......... ROI Interpreter
(3006,00C2) U      .K........ Related Frame of Reference UID
(3008,0024) D      .....KC... Treatment Control Point Date
(3008,0025) D      .....KC... Treatment Control Point Time
(3008,0054) X/D    .....KC... First Treatment Date
(3008,0056) X/D    .....KC... Most Recent Treatment Date
(3008,0105) X/Z    ..K....... Source Serial Number
(3008,0162) D      .....KC... Safe Position Exit Date
(3008,0164) D      .....KC... Safe Position Exit Time
(3008,0166) D      .....KC... Safe Position Return Date
(3008,0168) D      .....KC... Safe Position Return Time
(3008,0250) X/D    .....KC... Treatment Date
(3008,0251) X/D    .....KC... Treatment Time
(300A,0002) D      .......C.. RT Plan Label
(300A,0003) X      .......C.. RT Plan Name
(300A,0004) X      .......C.. RT Plan Description
(300A,0006) X/D    .....KC... RT Plan Date
(300A,0007) X/D    .....KC... RT Plan Time
(300A,000B) X      .......C.. Treatment Sites
(300A,000E) X      .......C.. Prescription Description
(300A,0013) U      .K........ Dose Reference UID
(300A,0016) X      .......C.. Dose Reference Description
(300A,0072) X      .......C.. Fraction Group Description
(300A,0083) U      .K........ Referenced Dose Reference UID
(300A,00B2) X/Z    ..K....... Treatment Machine Name
(300A,00C3) X      .......C.. Beam Description
(300A,00DD) X      .......C.. Bolus Description
(300A,0196) X      .......C.. Fixation Device Description
(300A,01A6) X      .......C.. Shielding Device Description
(300A,01B2) X      .......C.. Setup Technique Description
(300A,0216) X      ..K....... Source Manufacturer
(300A,022C) D      .....KC... Source Strength Reference Date
(300A,022E) D      .....KC... Source Strength Reference Time
(300A,02EB) X      .......C.. Compensator Description
(300A,0608) D      .......C.. Treatment Position Group Label
(300A,0609) U      .K........ Treatment Position Group UID
(300A,0611) Z      .......... RT Accessory Holder Slot ID
(300A,0615) Z      .......... RT Accessory Device Slot ID
(300A,0619) D      .......C.. Radiation Dose Identification Label
(300A,0623) D      .......C.. Radiation Dose In-Vivo Measurement Label
(300A,062A) D      .......C.. RT Tolerance Set Label
(300A,0650) U      .K........ Patient Setup UID
(300A,0676) X      .......C.. Equipment Frame of Reference Description
(300A,067C) D      .......C.. Radiation Generation Mode Label
(300A,067D) Z      .......C.. Radiation Generation Mode Description
(300A,0700) U      .K........ Treatment Session UID
(300A,0734) D      .......C.. Treatment Tolerance Violation Description
(300A,0736) D      .....KC... Treatment Tolerance Violation DateTime
(300A,073A) D      .....KC... Recorded RT Control Point DateTime
(300A,0741) D      .....KC... Interlock DateTime
(300A,0742) D      .......C.. Interlock Description
(300A,0760) D      .....KC... Override DateTime
(300A,0783) D      .......C.. Interlock Origin Description
(300A,0785) U      .K........ Referenced Treatment Position Group UID
(300A,078E) X      .......C.. Patient Treatment Preparation Procedure Parameter Description
(300A,0792) X      .......C.. Patient Treatment Preparation Method Description
(300A,0794) X      .......C.. Patient Setup Photo Description
(300A,079A) X      .......C.. Displacement Reference Label
(300C,0113) X      .......C.. Reason for Omission Description
(300C,0127) D      ..K..KC... Beam Hold Transition DateTime
(300E,0004) Z      .....KC... Review Date
(300E,0005) Z      .....KC... Review Time
(300E,0008) X/Z    .......... Reviewer Name
(3010,0006) U      .K........ Conceptual Volume UID
(3010,000B) U      .K........ Referenced Conceptual Volume UID
(3010,000F) Z      .......C.. Conceptual Volume Combination Description
(3010,0013) U      .K........ Constituent Conceptual Volume UID
(3010,0015) U      .K........ Source Conceptual Volume UID
(3010,0017) Z      .......C.. Conceptual Volume Description
(3010,001B) Z      .......... Device Alternate Identifier
(3010,002D) D      ..K....... Device Label
(3010,0031) U      .K........ Referenced Fiducials UID
(3010,0033) D      .......C.. User Content Label
(3010,0034) D      .......C.. User Content Long Label
(3010,0035) D      .......C.. Entity Label
(3010,0036) X      .......C.. Entity Name
(3010,0037) X      .......C.. Entity Description
(3010,0038) D      .......C.. Entity Long Label
(3010,003B) U      .K........ RT Treatment Phase UID
(3010,0043) Z      ..K....... Manufacturer's Device Identifier
(3010,004C) X/D    .....KC... Intended Phase Start Date
(3010,004D) X/D    .....KC... Intended Phase End Date
(3010,0054) D      .......C.. RT Prescription Label
(3010,0056) X/D    .......C.. RT Treatment Approach Label
(3010,005A) Z      .......C.. RT Physician Intent Narrative
(3010,005C) Z      .......C.. Reason for Superseding
(3010,0061) X      .......C.. Prior Treatment Dose Description
(3010,006E) U      .K........ Dosimetric Objective UID
(3010,006F) U      .K........ Referenced Dosimetric Objective UID
(3010,0077) X/D    .......C.. Treatment Site
(3010,007A) Z      .......C.. Treatment Technique Notes
(3010,007B) Z      .......C.. Prescription Notes
(3010,007F) Z      .......C.. Fractionation Notes
(3010,0081) Z      .......C.. Prescription Notes Sequence
(3010,0085) X      .....KC... Intended Fraction Start Time
(4000,0010) X      .......... Arbitrary
(4000,4000) X      .......... Text Comments
(4008,0040) X      .......... Results ID
(4008,0042) X      .......... Results ID Issuer
(4008,0100) X      .....KC... Interpretation Recorded Date
(4008,0101) X      .....KC... Interpretation Recorded Time
(4008,0102) X      .......... Interpretation Recorder
(4008,0108) X      .....KC... Interpretation Transcription Date
(4008,0109) X      .....KC... Interpretation Transcription Time
(4008,010A) X      .......... Interpretation Transcriber
(4008,010B) X      .......C.. Interpretation Text
(4008,010C) X      .......... Interpretation Author
(4008,0111) X      .......... Interpretation Approver Sequence
(4008,0112) X      .....KC... Interpretation Approval Date
(4008,0113) X      .....KC... Interpretation Approval Time
(4008,0114) X      .......... Physician Approving Interpretation
(4008,0115) X      .......C.. Interpretation Diagnosis Description
(4008,0118) X      .......... Results Distribution List Sequence
(4008,0119) X      .......... Distribution Name
(4008,011A) X      .......... Distribution Address
(4008,0200) X      .......... Interpretation ID
(4008,0202) X      .......... Interpretation ID Issuer
(4008,0300) X      .......C.. Impressions
(4008,4000) X      .......C.. Results Comments
(50XX,XXXX) X      .........C Curve Data
(60XX,3000) X      .........C Overlay Data
(60XX,4000) X      .........C Overlay Comments
(FFFA,FFFA) X      .......... Digital Signatures Sequence
(FFFC,FFFC) X      .......... Data Set Trailing Padding
(GGGG,EEEE) X      C......... Private Attributes
"""
