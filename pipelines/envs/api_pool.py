"""Synthetic API pool (domain "api"): procedurally generated tool signatures with simulated backends.

The point is breadth: the data should teach *reading a schema and extracting arguments*, not memorising a few
tools. So signatures are built from verb × noun × business-area vocabularies (`get_flight_booking_status`,
`issue_invoice`), each with typed parameters drawn from a field library (strings, integers, numbers, booleans,
enums, arrays, nested objects; required/optional; defaults), deterministically from a pool seed. Requests say
every argument value in natural language ("March 14, 2025", "by text message", "three guests"), so the model has
to map phrases to schema values (`2025-03-14`, `"sms"`, `3`).

Responses are simulated: a hash of the tool name + canonical arguments drives ids, statuses and computed fields,
so the same call always gives the same observation (what replay verification needs). Wrong types, enum values,
unknown or missing parameters, malformed dates/times/emails and ids that were never looked up raise `ToolError`.

Tools come from the task (`Task.setup["tools"]`, with the simulated backend's behaviour in `setup["apis"]`), not
from class methods. That suits the trace generator and eval (`env._call_tool`), but TRL's
`environment_factory` only exposes a class's fixed methods, so RL trains on the fixed-method domains.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

from pipelines.envs.base import ToolEnv, ToolError, _to_text
from pipelines.schema import argument_errors

DOMAIN = "api"
DEFAULT_POOL_SEED = 0

# ---------------------------------------------------------------------------------------------------------------
# Value vocabularies
# ---------------------------------------------------------------------------------------------------------------
FIRST_NAMES = (
    "Maria", "James", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Noah", "Fatima", "Lucas", "Elena", "Kwame",
    "Sofia", "Mateo", "Hannah", "Ravi", "Chloe", "Diego", "Amara", "Jonas", "Mei", "Tomasz", "Leila", "Felix",
)  # fmt: skip
LAST_NAMES = (
    "Lopez", "Okafor", "Tanaka", "Haddad", "Schmidt", "Silva", "Patel", "Kim", "Nowak", "Rossi", "Dubois",
    "Mensah", "Garcia", "Novak", "Fischer", "Ivanova", "Costa", "Nguyen", "Larsen", "Moreau", "Ali", "Berg",
)  # fmt: skip
CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Osaka", "Toronto", "Lyon", "Austin", "Porto", "Krakow", "Seoul", "Denver",
    "Melbourne", "Valencia", "Accra", "Hamburg", "Montreal", "Bogota", "Dublin", "Tallinn", "Cape Town",
)  # fmt: skip
STREETS = ("Oak Street", "Harbour Road", "Maple Avenue", "King's Lane", "Station Square", "Riverside Drive")
NOTES = (
    "Please call before delivery", "Leave it at the front desk", "Customer prefers mornings",
    "Quote reference from last week", "Handle with care", "Send the paperwork by email",
    "Follow up next Monday", "Budget approved by finance", "Use the side entrance", "Urgent for the board meeting",
)  # fmt: skip
TITLES = ("Spring Gala", "Quarterly Review", "Harbour Project", "Blue Line", "Team Offsite", "Summer Launch")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip
TAG_POOLS = {
    "tags": ("urgent", "billing", "vip", "follow-up", "internal", "renewal", "onboarding"),
    "labels": ("draft", "review", "finance", "legal", "q3", "priority"),
    "skills": ("python", "sql", "negotiation", "design", "spanish", "forklift"),
    "amenities": ("wifi", "parking", "pool", "gym", "breakfast", "balcony"),
    "dietary_tags": ("vegan", "gluten-free", "halal", "nut-free", "vegetarian"),
    "genres": ("jazz", "ambient", "hip-hop", "folk", "classical", "techno"),
    "keywords": ("pricing", "roadmap", "security", "hiring", "logistics", "sustainability"),
}

# Enum parameters: value → how a person would say it in a request.
ENUMS: dict[str, dict[str, str]] = {
    "priority": {"low": "with low priority", "normal": "with normal priority", "high": "with high priority",
                 "urgent": "marked urgent"},
    "currency": {"USD": "in US dollars", "EUR": "in euros", "GBP": "in British pounds", "JPY": "in Japanese yen",
                 "CHF": "in Swiss francs", "CAD": "in Canadian dollars"},
    "cabin_class": {"economy": "in economy", "premium_economy": "in premium economy",
                    "business": "in business class", "first": "in first class"},
    "channel": {"email": "by email", "sms": "by text message", "push": "via push notification",
                "phone": "with a phone call"},
    "file_format": {"pdf": "as a PDF", "csv": "as a CSV file", "json": "as JSON", "xlsx": "as an Excel sheet"},
    "frequency": {"daily": "every day", "weekly": "every week", "monthly": "every month",
                  "quarterly": "every quarter"},
    "unit_system": {"metric": "in metric units", "imperial": "in imperial units"},
    "language": {"en": "in English", "es": "in Spanish", "de": "in German", "fr": "in French",
                 "ja": "in Japanese", "pt": "in Portuguese"},
    "payment_method": {"card": "paying by card", "bank_transfer": "paying by bank transfer",
                       "paypal": "paying via PayPal", "cash": "paying in cash"},
    "severity": {"minor": "as a minor issue", "major": "as a major issue", "critical": "as a critical issue"},
    "size": {"small": "in size small", "medium": "in size medium", "large": "in size large", "xl": "in size XL"},
    "sort_order": {"newest": "newest first", "oldest": "oldest first", "price_asc": "cheapest first",
                   "price_desc": "most expensive first", "rating": "best rated first"},
    "visibility": {"public": "visible to everyone", "private": "kept private", "team": "visible to the team only"},
    "room_type": {"single": "for a single room", "double": "for a double room", "suite": "for a suite",
                  "family": "for a family room"},
    "vehicle_class": {"compact": "with a compact car", "suv": "with an SUV", "van": "with a van",
                      "luxury": "with a luxury car"},
    "delivery_speed": {"standard": "with standard delivery", "express": "with express delivery",
                       "overnight": "with overnight delivery"},
    "plan_tier": {"basic": "on the basic tier", "pro": "on the pro tier", "enterprise": "on the enterprise tier"},
    "experience_level": {"junior": "at junior level", "mid": "at mid level", "senior": "at senior level"},
    "room": {"kitchen": "in the kitchen", "bedroom": "in the bedroom", "living_room": "in the living room",
             "garage": "in the garage", "office": "in the office"},
    "crop": {"wheat": "for the wheat", "maize": "for the maize", "barley": "for the barley",
             "soy": "for the soybeans"},
    "country": {"US": "in the United States", "DE": "in Germany", "JP": "in Japan", "BR": "in Brazil",
                "KE": "in Kenya", "FR": "in France"},
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The field library: every parameter a generated signature can have
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldDef:
    """One parameter: its semantic kind drives the JSON schema, value sampling and request phrasing."""

    name: str
    kind: str
    phrase: str = "{v}"  # how the request says it; `{v}` is the spoken value
    extra: tuple[Any, ...] = ()  # kind-specific: (true, false) phrases for flags, max for counts …


def _fields(*rows: tuple[Any, ...]) -> dict[str, FieldDef]:
    return {row[0]: FieldDef(*row) for row in rows}


FIELDS: dict[str, FieldDef] = _fields(
    ("customer_name", "person", "for {v}"), ("passenger_name", "person", "for passenger {v}"),
    ("patient_name", "person", "for the patient {v}"), ("employee_name", "person", "for {v}"),
    ("contact_name", "person", "with {v} as the contact"), ("student_name", "person", "for the student {v}"),
    ("owner_name", "person", "owned by {v}"), ("assignee_name", "person", "assigned to {v}"),
    ("city", "city", "in {v}"), ("origin_city", "city", "from {v}"), ("destination_city", "city", "to {v}"),
    ("date", "date", "on {v}"), ("due_date", "date", "due {v}"), ("start_date", "date", "starting {v}"),
    ("delivery_date", "date", "for delivery on {v}"), ("travel_date", "date", "travelling on {v}"),
    ("appointment_date", "date", "on {v}"), ("effective_date", "date", "effective {v}"),
    ("new_date", "date", "to {v}"),
    ("start_time", "time", "at {v}"), ("pickup_time", "time", "with pickup at {v}"),
    ("amount", "amount", "for {v}"), ("budget", "amount", "with a budget of {v}"),
    ("max_price", "amount", "costing at most {v}"), ("unit_price", "amount", "at {v} per unit"),
    ("deposit", "amount", "with a {v} deposit"), ("weight_kg", "amount", "weighing {v} kg"),
    ("salary", "amount", "paying {v} a year"), ("area_sqm", "amount", "of {v} square meters"),
    ("target_temperature", "amount", "set to {v} degrees"), ("distance_km", "amount", "over {v} km"),
    ("quantity", "count", "{v} units", (50,)), ("guests", "count", "for {v} guests", (12,)),
    ("seats", "count", "{v} seats", (9,)), ("nights", "count", "for {v} nights", (21,)),
    ("attendees", "count", "for {v} attendees", (400,)), ("copies", "count", "{v} copies", (20,)),
    ("bedrooms", "count", "with {v} bedrooms", (6,)), ("days", "count", "for the next {v} days", (14,)),
    ("duration_minutes", "count", "lasting {v} minutes", (240,)), ("limit", "count", "showing {v} results", (25,)),
    ("discount_percent", "percent", "with a {v}% discount"), ("tip_percent", "percent", "with a {v}% tip"),
    ("tax_rate", "percent", "at a {v}% tax rate"), ("interest_rate", "percent", "at {v}% interest"),
    ("express", "flag", "", ("with express handling", "without express handling")),
    ("notify_customer", "flag", "", ("and notify the customer", "without notifying the customer")),
    ("include_archived", "flag", "", ("including archived records", "leaving out archived records")),
    ("refundable_only", "flag", "", ("refundable options only", "whether refundable or not")),
    ("send_receipt", "flag", "", ("and send a receipt", "with no receipt")),
    ("auto_renew", "flag", "", ("with auto-renewal on", "with auto-renewal off")),
    ("include_details", "flag", "", ("with the full details", "without the details")),
    ("gift_wrap", "flag", "", ("gift-wrapped", "without gift wrapping")),
    ("pet_friendly", "flag", "", ("pet-friendly", "no pets needed")),
    ("tags", "tags", "tagged {v}"), ("labels", "tags", "labelled {v}"), ("skills", "tags", "requiring {v}"),
    ("amenities", "tags", "with {v}"), ("dietary_tags", "tags", "that is {v}"), ("genres", "tags", "covering {v}"),
    ("keywords", "tags", "about {v}"),
    ("seat_numbers", "int_list", "in seats {v}"), ("room_numbers", "int_list", "for rooms {v}"),
    ("week_numbers", "int_list", "in weeks {v}"),
    ("shipping_address", "address", "delivered to {v}"), ("billing_address", "address", "billed to {v}"),
    ("site_address", "address", "at {v}"), ("pickup_address", "address", "picking up at {v}"),
    ("stay", "date_range", "staying {v}"), ("period", "date_range", "for the period {v}"),
    ("coverage_period", "date_range", "covering {v}"), ("date_range", "date_range", "{v}"),
    ("contact_email", "email", "(contact email {v})"), ("email", "email", "at {v}"),
    ("notify_email", "email", "and send updates to {v}"),
    ("note", "text", 'with the note "{v}"'), ("reason", "text", 'giving the reason "{v}"'),
    ("message", "text", 'with the message "{v}"'), ("title", "title", 'titled "{v}"'),
    ("line_items", "line_items", "with {v}"), ("price_range", "price_range", "priced {v}"),
    *((name, "enum", "{v}") for name in ENUMS),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Business areas: nouns, create verbs and the fields their signatures draw from
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Area:
    nouns: tuple[str, ...]
    create_verbs: tuple[str, ...]
    fields: tuple[str, ...]


AREAS: dict[str, Area] = {
    "travel": Area(("flight_booking", "hotel_reservation", "rental_car", "itinerary", "airport_transfer"),
                   ("book", "reserve", "create"),
                   ("passenger_name", "origin_city", "destination_city", "travel_date", "stay", "guests",
                    "cabin_class", "currency", "max_price", "refundable_only", "contact_email", "seat_numbers",
                    "pickup_time", "note", "room_type", "vehicle_class", "amenities")),
    "finance": Area(("invoice", "expense_report", "payment", "budget_plan", "refund"), ("create", "issue", "submit"),
                    ("customer_name", "amount", "currency", "due_date", "line_items", "tax_rate", "payment_method",
                     "note", "billing_address", "send_receipt", "contact_email", "period", "discount_percent")),
    "retail": Area(("order", "product_listing", "return_request", "gift_card", "wishlist"),
                   ("place", "create", "submit"),
                   ("customer_name", "line_items", "shipping_address", "delivery_speed", "gift_wrap", "currency",
                    "discount_percent", "size", "quantity", "tags", "note", "max_price", "price_range")),
    "healthcare": Area(("appointment", "prescription_refill", "lab_order", "referral", "vaccination"),
                       ("schedule", "request", "create"),
                       ("patient_name", "appointment_date", "start_time", "city", "language", "note",
                        "contact_email", "priority", "channel", "duration_minutes")),
    "hr": Area(("leave_request", "job_posting", "candidate_profile", "performance_review", "onboarding_plan"),
               ("submit", "create", "open"),
               ("employee_name", "start_date", "period", "experience_level", "skills", "city", "salary",
                "visibility", "note", "frequency", "priority", "assignee_name")),
    "logistics": Area(("shipment", "pickup", "delivery_route", "warehouse_transfer", "customs_declaration"),
                      ("create", "schedule", "book"),
                      ("origin_city", "destination_city", "weight_kg", "pickup_address", "delivery_date",
                       "delivery_speed", "quantity", "pickup_time", "contact_name", "notify_customer",
                       "unit_system", "distance_km")),
    "weather": Area(("forecast_subscription", "weather_alert", "air_quality_report", "pollen_report"),
                    ("create", "subscribe", "set"),
                    ("city", "date", "unit_system", "frequency", "channel", "language", "days", "include_details",
                     "notify_email")),
    "music": Area(("playlist", "concert_ticket", "radio_station", "practice_session"), ("create", "book", "add"),
                  ("owner_name", "genres", "visibility", "seats", "date", "city", "seat_numbers", "currency",
                   "language", "duration_minutes", "title")),
    "sports": Area(("match_ticket", "training_session", "team_roster", "court_booking"),
                   ("book", "schedule", "create"),
                   ("customer_name", "date", "start_time", "duration_minutes", "seats", "seat_numbers", "city",
                    "experience_level", "currency", "note")),
    "real_estate": Area(("property_listing", "viewing", "rental_application", "maintenance_request", "lease"),
                        ("create", "schedule", "submit"),
                        ("site_address", "budget", "price_range", "bedrooms", "area_sqm", "pet_friendly",
                         "start_date", "contact_email", "note", "priority", "owner_name")),
    "education": Area(("course_enrollment", "assignment", "exam_booking", "tutoring_session", "transcript_request"),
                      ("create", "book", "submit"),
                      ("student_name", "start_date", "language", "experience_level", "duration_minutes",
                       "file_format", "note", "email", "due_date", "title")),
    "crm": Area(("customer_account", "sales_lead", "support_ticket", "deal", "campaign"), ("create", "open", "log"),
                ("customer_name", "contact_email", "priority", "channel", "tags", "severity", "amount", "note",
                 "currency", "assignee_name", "title")),
    "smart_home": Area(("thermostat_schedule", "light_scene", "security_alarm", "energy_report"),
                       ("create", "set", "schedule"),
                       ("room", "target_temperature", "start_time", "frequency", "unit_system", "notify_email",
                        "title", "days")),
    "food": Area(("food_order", "restaurant_reservation", "meal_plan", "catering_quote"),
                 ("place", "book", "create"),
                 ("customer_name", "line_items", "shipping_address", "guests", "start_time", "date",
                  "dietary_tags", "tip_percent", "payment_method", "note")),
    "events": Area(("event", "venue_booking", "rsvp", "speaker_slot", "ticket_batch"),
                   ("create", "book", "register"),
                   ("title", "date_range", "date", "city", "attendees", "budget", "visibility", "contact_email",
                    "tags", "start_time", "duration_minutes")),
    "insurance": Area(("insurance_claim", "policy_quote", "coverage_change", "beneficiary"),
                      ("file", "create", "submit"),
                      ("customer_name", "amount", "coverage_period", "severity", "note", "contact_email",
                       "payment_method", "effective_date", "currency")),
    "automotive": Area(("service_appointment", "vehicle_inspection", "parts_order", "test_drive"),
                       ("book", "schedule", "place"),
                       ("customer_name", "appointment_date", "start_time", "vehicle_class", "city", "note",
                        "line_items", "contact_email")),
    "telecom": Area(("mobile_plan", "data_addon", "roaming_pass", "number_port", "support_callback"),
                    ("activate", "create", "request"),
                    ("customer_name", "plan_tier", "country", "start_date", "auto_renew", "channel",
                     "contact_email", "days", "note")),
    "media": Area(("article", "podcast_episode", "video_upload", "subtitle_track", "newsletter"),
                  ("create", "publish", "schedule"),
                  ("title", "language", "tags", "visibility", "file_format", "duration_minutes", "date",
                   "owner_name", "keywords")),
    "banking": Area(("bank_transfer", "savings_goal", "card_limit", "standing_order", "loan_application"),
                    ("create", "set", "submit"),
                    ("owner_name", "amount", "currency", "frequency", "start_date", "note", "effective_date",
                     "interest_rate", "notify_email")),
    "agriculture": Area(("irrigation_schedule", "crop_report", "soil_test", "harvest_log"),
                        ("create", "schedule", "log"),
                        ("crop", "area_sqm", "start_time", "frequency", "date", "unit_system", "week_numbers",
                         "note")),
    "legal": Area(("contract_review", "nda", "court_filing", "legal_consultation"),
                  ("request", "create", "file"),
                  ("contact_name", "due_date", "priority", "language", "file_format", "note", "contact_email",
                   "keywords")),
    "pets": Area(("vet_appointment", "grooming_session", "pet_sitter_booking", "pet_profile"),
                 ("book", "schedule", "create"),
                 ("owner_name", "appointment_date", "start_time", "size", "note", "days", "contact_email")),
    "fitness": Area(("workout_plan", "class_booking", "nutrition_log", "training_package"),
                    ("create", "book", "log"),
                    ("customer_name", "date", "start_time", "experience_level", "duration_minutes", "frequency",
                     "dietary_tags", "amount", "currency")),
}  # fmt: skip

# Verb families: how a signature behaves and how a request asks for it.
READ_VERBS = ("get", "check", "fetch", "retrieve", "view")
READ_ASPECTS = ("status", "details", "summary", "history", "availability", "price")
FIND_VERBS = ("find", "search", "lookup")
COMPUTE_NAMES = (("estimate", "cost"), ("calculate", "total"), ("quote", "price"), ("estimate", "duration"))
MUTATE_VERBS = ("update", "cancel", "archive", "approve", "reschedule", "assign")
NOTIFY_NAMES = ("send_{noun}_reminder", "share_{noun}")
MUTATE_STATUS = {"update": "updated", "cancel": "cancelled", "archive": "archived", "approve": "approved",
                 "reschedule": "rescheduled", "assign": "assigned"}  # fmt: skip
READ_STATUSES = ("pending", "confirmed", "in_progress", "on_hold", "completed", "delayed", "awaiting_review")
CREATE_STATUS = {"book": "confirmed", "reserve": "confirmed", "schedule": "scheduled", "submit": "submitted",
                 "file": "submitted", "request": "requested", "place": "placed", "publish": "published",
                 "activate": "active", "subscribe": "active", "register": "registered"}  # fmt: skip
ID_RE = re.compile(r"^[A-Z]{3}-\d{6}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")


def words(name: str) -> str:
    return name.replace("_", " ")


def article(thing: str) -> str:
    return "an" if thing[:1] in "aeiou" else "a"


def plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def id_prefix(noun: str) -> str:
    """Three letters that identify the noun in its ids: `invoice` → INV, `flight_booking` → FLB."""
    parts = noun.split("_")
    letters = (parts[0][:2] + parts[1][0]) if len(parts) > 1 else parts[0][:3]
    return letters.upper().ljust(3, "X")


def digest(*parts: Any) -> int:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(blob.encode("utf-8")).digest()[:8], "big")


def make_id(noun: str, *parts: Any) -> str:
    return f"{id_prefix(noun)}-{digest(noun, *parts) % 900000 + 100000}"


# ---------------------------------------------------------------------------------------------------------------
# Field kinds: JSON schema, sampled value and spoken form
# ---------------------------------------------------------------------------------------------------------------
def field_schema(f: FieldDef) -> dict[str, Any]:
    label = words(f.name).capitalize()
    simple: dict[str, dict[str, Any]] = {
        "person": {"type": "string", "description": f"{label}: full name."},
        "city": {"type": "string", "description": f"{label}, e.g. Lisbon."},
        "date": {"type": "string", "format": "date", "description": f"{label} in YYYY-MM-DD format."},
        "time": {"type": "string", "description": f"{label} in 24-hour HH:MM format."},
        "amount": {"type": "number", "minimum": 0, "description": f"{label}."},
        "percent": {"type": "number", "minimum": 0, "maximum": 100, "description": f"{label} in percent."},
        "flag": {"type": "boolean", "description": f"{label}?"},
        "email": {"type": "string", "format": "email", "description": f"{label} address."},
        "text": {"type": "string", "description": f"{label} (free text)."},
        "title": {"type": "string", "description": f"{label} (free text)."},
        "entity_id": {"type": "string", "description": f"{label} (looks like ABC-123456)."},
        "code": {"type": "string", "description": f"{label} (letters then digits, e.g. ABC12345)."},
        "query": {"type": "string", "description": "Name or title to look up (exact or partial)."},
    }
    if f.kind in simple:
        return dict(simple[f.kind])
    if f.kind == "count":
        return {"type": "integer", "minimum": 1, "maximum": f.extra[0], "description": f"{label}."}
    if f.kind == "enum":
        return {"type": "string", "enum": list(ENUMS[f.name]), "description": f"{label}."}
    return _compound_schema(f, label)


def _compound_schema(f: FieldDef, label: str) -> dict[str, Any]:
    iso = {"type": "string", "format": "date", "description": "YYYY-MM-DD."}
    if f.kind == "tags":
        return {"type": "array", "items": {"type": "string"}, "description": f"{label} (list of words)."}
    if f.kind == "int_list":
        return {"type": "array", "items": {"type": "integer"}, "description": f"{label} (list of numbers)."}
    if f.kind == "address":
        props: dict[str, dict[str, Any]] = {
            "street": {"type": "string"},
            "city": {"type": "string"},
            "postal_code": {"type": "string"},
        }
        return {
            "type": "object",
            "properties": props,
            "required": ["street", "city"],
            "description": label + ".",
        }
    if f.kind == "date_range":
        props = {"start": iso, "end": dict(iso, description="YYYY-MM-DD, on or after start.")}
        return {
            "type": "object",
            "properties": props,
            "required": ["start", "end"],
            "description": label + ".",
        }
    if f.kind == "price_range":
        props = {"min": {"type": "number", "minimum": 0}, "max": {"type": "number", "minimum": 0}}
        return {"type": "object", "properties": props, "required": ["min", "max"], "description": label + "."}
    if f.kind == "line_items":
        item = {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
            "required": ["sku", "quantity"],
        }
        return {
            "type": "array",
            "items": item,
            "minItems": 1,
            "description": f"{label}: SKU and quantity each.",
        }
    raise ValueError(f"unknown field kind {f.kind!r}")


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _date(rng: random.Random) -> date:
    return date(2025, 1, 1) + timedelta(days=rng.randrange(0, 700))


def sample_value(f: FieldDef, rng: random.Random, noun: str = "") -> Any:
    """A plausible value for a parameter (JSON-ready)."""
    kind = f.kind
    if kind in ("person", "city", "text", "title"):
        return (
            _person(rng)
            if kind == "person"
            else rng.choice({"city": CITIES, "text": NOTES}.get(kind, TITLES))
        )
    if kind == "date":
        return _date(rng).isoformat()
    if kind == "time":
        return f"{rng.randint(7, 20):02d}:{rng.choice((0, 15, 30, 45)):02d}"
    if kind == "amount":
        return round(rng.uniform(20, 2500), rng.choice((0, 2)))
    if kind == "count":
        return rng.randint(1, min(f.extra[0], 10))
    if kind == "percent":
        return rng.choice((5, 10, 12.5, 15, 18, 20, 25))
    if kind == "flag":
        return rng.random() < 0.5
    if kind == "enum":
        return rng.choice(list(ENUMS[f.name]))
    if kind == "email":
        return f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}@example.com".lower()
    if kind == "code":
        return f"{id_prefix(noun)}{rng.randint(10000, 99999)}"
    return _sample_compound(f, rng)


def _sample_compound(f: FieldDef, rng: random.Random) -> Any:
    if f.kind == "tags":
        return rng.sample(TAG_POOLS[f.name if f.name in TAG_POOLS else "tags"], rng.randint(1, 3))
    if f.kind == "int_list":
        return sorted(rng.sample(range(1, 60), rng.randint(2, 3)))
    if f.kind == "address":
        addr = {"street": f"{rng.randint(2, 220)} {rng.choice(STREETS)}", "city": rng.choice(CITIES)}
        return addr | ({"postal_code": str(rng.randint(10000, 99999))} if rng.random() < 0.6 else {})
    if f.kind == "date_range":
        start = _date(rng)
        return {"start": start.isoformat(), "end": (start + timedelta(days=rng.randint(1, 14))).isoformat()}
    if f.kind == "price_range":
        low = rng.choice((0, 20, 50, 100, 250))
        return {"min": low, "max": low + rng.choice((50, 100, 200, 500))}
    if f.kind == "line_items":
        skus = rng.sample(range(10000, 99999), rng.randint(1, 3))
        return [{"sku": f"SKU{s}", "quantity": rng.randint(1, 5)} for s in skus]
    raise ValueError(f"unknown field kind {f.kind!r}")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def say_date(iso: str, style: int) -> str:
    """Spoken date: 0 → ISO, 1 → `March 4, 2025`, 2 → `4 March 2025`."""
    d = date.fromisoformat(iso)
    return (iso, f"{MONTHS[d.month - 1]} {d.day}, {d.year}", f"{d.day} {MONTHS[d.month - 1]} {d.year}")[style]


def say_time(hhmm: str, twelve_hour: bool) -> str:
    hour, minute = (int(x) for x in hhmm.split(":"))
    if not twelve_hour:
        return hhmm
    suffix = "am" if hour < 12 else "pm"
    return f"{(hour - 1) % 12 + 1}:{minute:02d} {suffix}" if minute else f"{(hour - 1) % 12 + 1} {suffix}"


def say(f: FieldDef, value: Any, rng: random.Random) -> tuple[str, str]:
    """(phrase in the request, the surface form of the value as written). Surface ≠ value means a conversion."""
    kind = f.kind
    if kind == "flag":
        text = f.extra[0] if value else f.extra[1]
        return text, text
    if kind == "enum":
        return ENUMS[f.name][value], ENUMS[f.name][value]
    surface = _surface(f, value, rng)
    return f.phrase.format(v=surface), surface


def _surface(f: FieldDef, value: Any, rng: random.Random) -> str:
    kind = f.kind
    if kind == "date":
        return say_date(value, rng.choice((0, 1, 1, 2)))
    if kind == "time":
        return say_time(value, rng.random() < 0.5)
    if kind == "count":
        return NUMBER_WORDS[value] if value <= 10 and rng.random() < 0.4 else str(value)
    if kind == "amount":
        return f"{value:.2f}" if isinstance(value, float) and value != int(value) else f"{value:g}"
    if kind in ("tags", "int_list"):
        return _join([str(v) for v in value])
    if kind == "address":
        return ", ".join([value["street"], value["city"]]) + (
            f" {value['postal_code']}" if "postal_code" in value else ""
        )
    if kind == "date_range":
        style = rng.choice((0, 1, 2))
        return f"from {say_date(value['start'], style)} to {say_date(value['end'], style)}"
    if kind == "price_range":
        return f"between {value['min']} and {value['max']}"
    if kind == "line_items":
        return _join([f"{item['quantity']} × {item['sku']}" for item in value])
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# The pool: signature = OpenAI-style spec + the simulated backend's behaviour
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Signature:
    name: str
    area: str
    noun: str
    family: str  # find | read | create | compute | mutate | notify
    verb: str
    aspect: str  # read aspect, compute quantity, or ""
    params: dict[str, FieldDef]
    required: list[str]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def spec(self) -> dict[str, Any]:
        props = {}
        for pname, f in self.params.items():
            schema = field_schema(f)
            if pname in self.defaults:
                schema["default"] = self.defaults[pname]
            props[pname] = schema
        parameters = {"type": "object", "properties": props, "required": list(self.required)}
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": parameters}}  # fmt: skip

    def behaviour(self) -> dict[str, Any]:
        """What the simulated backend needs beyond the spec (stored in `Task.setup["apis"]`)."""
        kinds = {p: f.kind for p, f in self.params.items()}
        return {"family": self.family, "noun": self.noun, "verb": self.verb, "aspect": self.aspect,
                "kinds": kinds, "defaults": dict(self.defaults)}  # fmt: skip


def _key_field(noun: str, by_id: bool) -> FieldDef:
    return FieldDef(f"{noun}_id", "entity_id") if by_id else FieldDef(f"{noun}_number", "code", "{v}")


def _pick_fields(rng: random.Random, area: Area, k: int, exclude: set[str]) -> list[FieldDef]:
    names = [n for n in area.fields if n not in exclude]
    return [FIELDS[n] for n in rng.sample(names, min(k, len(names)))]


def _optional_defaults(rng: random.Random, optional: list[FieldDef]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in optional:
        if f.kind == "flag":
            out[f.name] = False
        elif f.kind == "enum" and rng.random() < 0.7:
            out[f.name] = next(iter(ENUMS[f.name]))
        elif f.name == "limit":
            out[f.name] = 10
    return out


FILTER_KINDS = ("city", "date", "date_range", "price_range", "tags", "enum", "flag")
NOT_FILTERS = (
    "file_format",
    "language",
    "channel",
    "currency",
    "unit_system",
    "payment_method",
)  # not search criteria
MUTATE_EXTRAS = ("note", "notify_customer", "priority", "send_receipt")
NOTIFY_EXTRAS = ("message", "language")
READ_EXTRAS = ("include_details", "language", "file_format", "currency", "unit_system")


def _signature(
    rng: random.Random, area_name: str, noun: str, family: str, verb: str, aspect: str
) -> Signature:
    area = AREAS[area_name]
    if family == "find":
        filters = [n for n in area.fields if FIELDS[n].kind in FILTER_KINDS and n not in NOT_FILTERS]
        required = [FieldDef("query", "query")]
        optional = [FIELDS[n] for n in rng.sample(filters, min(len(filters), rng.randint(0, 2)))]
    elif family == "read":
        required = [_key_field(noun, by_id=rng.random() < 0.5)]
        optional = [FIELDS[n] for n in rng.sample(READ_EXTRAS, rng.randint(0, 2))]
    elif family in ("create", "compute"):
        required, optional = _create_fields(rng, area, family)
    else:  # mutate / notify act on a looked-up entity
        required = [_key_field(noun, by_id=True), *_mutation_fields(rng, area, verb, family)]
        extras = [n for n in (NOTIFY_EXTRAS if family == "notify" else MUTATE_EXTRAS) if n not in required]
        optional = [FIELDS[n] for n in rng.sample(extras, rng.randint(0, 1))]
    params = {f.name: f for f in [*required, *optional]}
    name = _signature_name(noun, family, verb, aspect)
    return Signature(name, area_name, noun, family, verb, aspect, params, [f.name for f in required],
                     _optional_defaults(rng, optional), _description(family, verb, noun, aspect, rng))  # fmt: skip


def _create_fields(rng: random.Random, area: Area, family: str) -> tuple[list[FieldDef], list[FieldDef]]:
    """2–6 area fields, 1–3 of them required; a calculator always requires a number to compute from."""
    fields = _pick_fields(rng, area, rng.randint(2, 6), set())
    numeric = [f for f in fields if f.kind in ("amount", "count", "percent")]
    if family == "compute":
        if not numeric:
            candidates = [n for n in area.fields if FIELDS[n].kind in ("amount", "count", "percent")]
            numeric = [FIELDS[rng.choice(candidates)]] if candidates else [FIELDS["quantity"]]
        fields = [numeric[0]] + [f for f in fields if f is not numeric[0]]
    cut = max(1, min(len(fields) - 1, rng.randint(1, 3))) if len(fields) > 1 else 1
    return fields[:cut], fields[cut:]


def _mutation_fields(rng: random.Random, area: Area, verb: str, family: str) -> list[FieldDef]:
    if family == "notify":
        return [FIELDS["channel"]]
    if verb == "reschedule":
        return [FIELDS["new_date"]]
    if verb == "assign":
        return [FIELDS["assignee_name"]]
    if verb == "cancel":
        return [FIELDS["reason"]] if rng.random() < 0.5 else []
    if verb == "update":
        return _pick_fields(rng, area, 1, {"note"})
    return []


def _signature_name(noun: str, family: str, verb: str, aspect: str) -> str:
    if family == "find":
        return f"search_{plural(noun)}" if verb == "search" else f"{verb}_{noun}"
    if family in ("read", "compute"):
        return f"{verb}_{noun}_{aspect}"
    if family == "notify":
        return verb.format(noun=noun)
    return f"{verb}_{noun}"


def _description(family: str, verb: str, noun: str, aspect: str, rng: random.Random) -> str:
    thing = words(noun)
    options = {
        "find": (
            f"Look up {plural(thing)} by name or title; returns matching ids.",
            f"Search the {thing} directory. Use it to get a {thing} id before acting on it.",
        ),
        "read": (f"Return the {aspect} of one {thing}.", f"Fetch the current {aspect} for a {thing}."),
        "create": (
            f"{verb.capitalize()} a new {thing}; returns its id and status.",
            f"{verb.capitalize()} a {thing}. The response carries the new {thing} id.",
        ),
        "compute": (
            f"{verb.capitalize()} the {aspect} of a {thing} from the given inputs.",
            f"Price calculator: {verb} the {aspect} for a {thing}.",
        ),
        "mutate": (
            f"{verb.capitalize()} an existing {thing} by id; returns a confirmation code.",
            f"{verb.capitalize()} a {thing}. Needs the {thing} id from a lookup.",
        ),
        "notify": (
            f"Send a message about a {thing} over the chosen channel.",
            f"Notify the owner of a {thing}; returns a message id.",
        ),
    }[family]
    return rng.choice(options)


def _noun_signatures(rng: random.Random, area_name: str, noun: str) -> list[Signature]:
    area = AREAS[area_name]
    plan: list[tuple[str, str, str]] = [("find", v, "") for v in FIND_VERBS]
    aspects = rng.sample(READ_ASPECTS, 4)
    plan += [("read", rng.choice(READ_VERBS), a) for a in aspects]
    plan += [("create", v, "") for v in area.create_verbs]
    plan += [("compute", v, a) for v, a in rng.sample(COMPUTE_NAMES, 2)]
    plan += [("mutate", v, "") for v in rng.sample(MUTATE_VERBS, 4)]
    plan += [("notify", v, "") for v in NOTIFY_NAMES]
    return [_signature(rng, area_name, noun, fam, verb, aspect) for fam, verb, aspect in plan]


@dataclass
class Pool:
    signatures: dict[str, Signature]
    by_noun: dict[tuple[str, str], list[Signature]]

    def for_noun(self, area: str, noun: str, family: str) -> list[Signature]:
        return [s for s in self.by_noun[(area, noun)] if s.family == family]


@lru_cache(maxsize=4)
def build_pool(seed: int = DEFAULT_POOL_SEED) -> Pool:
    """Every signature of the pool, deterministic from `seed` (names are unique; the first builder wins)."""
    rng = random.Random(f"api-pool/{seed}")
    signatures: dict[str, Signature] = {}
    by_noun: dict[tuple[str, str], list[Signature]] = {}
    for area_name, area in AREAS.items():
        for noun in area.nouns:
            for sig in _noun_signatures(rng, area_name, noun):
                if sig.name not in signatures:
                    signatures[sig.name] = sig
                    by_noun.setdefault((area_name, noun), []).append(sig)
    return Pool(signatures, by_noun)


# ---------------------------------------------------------------------------------------------------------------
# Simulated backend
# ---------------------------------------------------------------------------------------------------------------
def simulate(spec: dict[str, Any], api: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """The deterministic response of one call, or ToolError naming the bad argument."""
    _validate(spec, api, arguments)
    args = {**api.get("defaults", {}), **arguments}
    h = digest(spec["function"]["name"], args)
    responder = {"find": _find, "read": _read, "create": _create, "compute": _compute, "mutate": _mutate,
                 "notify": _notify}[api["family"]]  # fmt: skip
    return responder(api, args, h)


def _validate(spec: dict[str, Any], api: dict[str, Any], arguments: dict[str, Any]) -> None:
    params = spec["function"]["parameters"]
    unknown = sorted(set(arguments) - set(params["properties"]))
    if unknown:
        raise ToolError(f"unknown parameter {unknown[0]!r}; accepted: {', '.join(params['properties'])}")
    missing = [p for p in params.get("required", []) if p not in arguments]
    if missing:
        raise ToolError(f"missing required parameter {missing[0]!r}")
    problems = argument_errors(spec, arguments)
    if problems:
        raise ToolError(f"invalid arguments: {'; '.join(problems)}")
    for pname, value in arguments.items():
        _check_semantics(pname, api["kinds"][pname], value, api["noun"])


def _check_semantics(pname: str, kind: str, value: Any, noun: str) -> None:
    if kind == "date" and not _is_iso_date(value):
        raise ToolError(f"{pname}: {value!r} is not a date in YYYY-MM-DD format")
    if kind == "time" and not TIME_RE.match(value):
        raise ToolError(f"{pname}: {value!r} is not a 24-hour HH:MM time")
    if kind == "email" and not EMAIL_RE.match(value):
        raise ToolError(f"{pname}: {value!r} is not an email address")
    if kind == "entity_id" and not ID_RE.match(value):
        raise ToolError(
            f"{pname}: no {words(noun)} with id {value!r} (ids look like {id_prefix(noun)}-123456; "
            f"look the {words(noun)} up first)"
        )
    if kind == "date_range":
        for end in ("start", "end"):
            if not _is_iso_date(value[end]):
                raise ToolError(f"{pname}.{end}: {value[end]!r} is not a date in YYYY-MM-DD format")
        if value["end"] < value["start"]:
            raise ToolError(f"{pname}: end {value['end']} is before start {value['start']}")
    if kind == "price_range" and value["max"] < value["min"]:
        raise ToolError(f"{pname}: max {value['max']} is below min {value['min']}")


def _is_iso_date(value: str) -> bool:
    if not DATE_RE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _key(api: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    key = next((p for p, k in api["kinds"].items() if k in ("entity_id", "code")), None)
    return {key: args[key]} if key else {}


def _find(api: dict[str, Any], args: dict[str, Any], h: int) -> dict[str, Any]:
    noun, query = api["noun"], args["query"]
    results = [{f"{noun}_id": make_id(noun, query.lower()), "name": query, "match": "exact"}]
    for i in range(h % 3):
        partial = f"{query} ({('archived', 'duplicate', 'draft')[(h >> (4 + i)) % 3]})"
        results.append({f"{noun}_id": make_id(noun, query.lower(), i), "name": partial, "match": "partial"})
    return {"count": len(results), "results": results}


def _read(api: dict[str, Any], args: dict[str, Any], h: int) -> dict[str, Any]:
    aspect, out = api["aspect"], _key(api, args)
    if aspect == "status":
        out |= {"status": READ_STATUSES[h % len(READ_STATUSES)], "last_updated": _hash_date(h)}
    elif aspect == "details":
        out |= {"owner": f"{FIRST_NAMES[h % 24]} {LAST_NAMES[(h >> 5) % 22]}", "created_on": _hash_date(h >> 9),
                "status": READ_STATUSES[(h >> 13) % len(READ_STATUSES)]}  # fmt: skip
    elif aspect == "summary":
        out |= {"items": h % 17 + 1, "open_items": h % 5, "last_updated": _hash_date(h >> 3)}
    elif aspect == "history":
        events = ("created", "updated", "approved", "shipped", "reviewed", "paid")
        n = h % 3 + 2
        out |= {
            "events": [
                {"event": events[(h >> (3 * i)) % 6], "on": _hash_date(h >> (5 * i))} for i in range(n)
            ]
        }
    elif aspect == "availability":
        out |= {"available": h % 4 != 0, "slots_left": 0 if h % 4 == 0 else h % 9 + 1}
    else:
        out |= {"price": round((h % 90000) / 100 + 15, 2), "currency": args.get("currency", "USD")}
    return out


def _hash_date(h: int) -> str:
    return (date(2025, 1, 1) + timedelta(days=h % 600)).isoformat()


def _create(api: dict[str, Any], args: dict[str, Any], h: int) -> dict[str, Any]:
    noun = api["noun"]
    out: dict[str, Any] = {
        f"{noun}_id": make_id(noun, "new", h),
        "status": CREATE_STATUS.get(api["verb"], "created"),
    }
    total = _total(args)
    if total is not None:
        out["total"] = total
    return out


def _total(args: dict[str, Any]) -> float | None:
    """Computed field: amount-like × count-like, less discounts, plus tax — real arithmetic on the arguments."""
    amounts = [v for k, v in args.items() if k in FIELDS and FIELDS[k].kind == "amount"]
    if not amounts:
        return None
    total = float(amounts[0])
    for k in ("quantity", "guests", "seats", "nights", "copies"):
        total *= args.get(k, 1)
    total *= 1 - args.get("discount_percent", 0) / 100
    total *= 1 + (args.get("tax_rate", 0) + args.get("tip_percent", 0)) / 100
    return round(total, 2)


def _compute(api: dict[str, Any], args: dict[str, Any], h: int) -> dict[str, Any]:
    numbers = [
        float(v) for k, v in sorted(args.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    base = sum(numbers) if numbers else 1.0
    rate = 0.75 + (h % 1000) / 1000  # the simulated provider's rate, fixed per (tool, arguments)
    value = round(base * rate, 2)
    unit = "minutes" if api["aspect"] == "duration" else args.get("currency", "USD")
    return {api["aspect"]: value, "unit": unit, "inputs_used": sorted(args)}


def _mutate(api: dict[str, Any], args: dict[str, Any], h: int) -> dict[str, Any]:
    noun = api["noun"]
    return {f"{noun}_id": args[f"{noun}_id"], "status": MUTATE_STATUS.get(api["verb"], "updated"),
            "confirmation": f"CNF-{h % 900000 + 100000}"}  # fmt: skip


def _notify(api: dict[str, Any], args: dict[str, Any], h: int) -> dict[str, Any]:
    noun = api["noun"]
    return {
        f"{noun}_id": args[f"{noun}_id"],
        "delivered_via": args["channel"],
        "message_id": f"MSG-{h % 900000 + 100000}",
    }


# ---------------------------------------------------------------------------------------------------------------
# Environment: tools come from the task
# ---------------------------------------------------------------------------------------------------------------
class ApiPoolEnv(ToolEnv):
    """Serves the task's simulated APIs. It has no fixed tool methods, so TRL's environment_factory can't use it."""

    domain = DOMAIN

    def _setup(self, setup: dict[str, Any]) -> None:
        self._specs = {spec["function"]["name"]: spec for spec in setup.get("tools", [])}
        self._apis: dict[str, dict[str, Any]] = setup.get("apis", {})

    def _task_tools(self) -> list[dict[str, Any]]:
        return list(self._specs.values())

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        if name not in self._specs:
            self._calls.append((name, arguments, True))
            return f"Error: unknown tool {name!r}; available: {', '.join(sorted(self._specs))}", True
        try:
            result = simulate(self._specs[name], self._apis[name], arguments)
        except ToolError as exc:
            self._calls.append((name, arguments, True))
            return f"Error: {exc}", True
        self._calls.append((name, arguments, False))
        return _to_text(result), False

    def _check_state(self, expected: dict[str, Any]) -> bool:
        """Every expected call was made successfully (as a multiset: parallel calls may come in any order)."""
        made = Counter(_canonical(n, a) for n, a, failed in self._calls if not failed)
        wanted = Counter(_canonical(n, a) for n, a in expected.get("calls", []))
        return not (wanted - made)


def _canonical(name: str, arguments: dict[str, Any]) -> str:
    return json.dumps([name, arguments], sort_keys=True, ensure_ascii=False)
