"""check_content(): leftover placeholders and secrets, the near misses that must pass, hostile input.

Secret-looking values are assembled from pieces so that this file does not itself trip the secret
scanners of the places it is pushed to.
"""

from __future__ import annotations

import html

import pytest

from sendguard.intake.boundaries import SENSITIVE_CONTENT, UNRENDERED_TEMPLATE, check_content
from sendguard.model import Reason

WHERE = ["subject", "text body", "HTML body"]


def placed(where: str, sentence: str) -> tuple[str, str | None, str | None]:
    """(subject, text, html) with the sentence in one of them, the others harmless."""
    if where == "subject":
        return sentence, "Thanks for your time.", None
    if where == "text body":
        return "Quick question", sentence, None
    body = html.escape(sentence, quote=False).replace("\n", "<br>\n")
    return "Quick question", None, f"<html><body><p>{body}</p></body></html>"


def leaked(value: str, reasons: list[Reason]) -> list[str]:
    """Every 6-character piece of the value that appears in a reason's detail."""
    details = " ".join(reason.detail for reason in reasons)
    return [value[i : i + 6] for i in range(len(value) - 5) if value[i : i + 6] in details]


# -- unrendered_template ------------------------------------------------------------------------

PLACEHOLDERS = [
    "{{first_name}}",
    "{{ company }}",
    '{{ first_name | default: "there" }}',
    "{{#if company}}",
    "{% if company %}",
    "{first_name}",
    "{FirstName}",
    "{contact.company}",
    "[FIRST NAME]",
    "[First Name]",
    "[Company Name]",
    "[COMPANY]",
    "[FirstName]",
    "[first_name]",
    "[Recipient's Name]",
    "[Recipient\u2019s Name]",
    "[Insert Link]",
    "[[first_name]]",
    "%FIRSTNAME%",
    "%first_name%",
    "<<first_name>>",
    "{!Contact.FirstName}",
    "*|FNAME|*",
    "*|MC:SUBJECT|*",
    "${name}",
    "${ company }",
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("placeholder", PLACEHOLDERS)
def test_placeholder_is_flagged(placeholder: str, where: str) -> None:
    reasons = check_content(*placed(where, f"Hi {placeholder}, quick question about your Q4 volume."))
    assert reasons == [Reason(UNRENDERED_TEMPLATE, f"{where} contains the placeholder {placeholder}")]


NEAR_MISSES = [
    "Use the { key to open a block and close it with }.",
    'When all is well the API answers {"status": "ok"}.',
    "Our widget's default style is p { color: red; } and you can override it.",
    "An empty object is written {} in JSON.",
    "In maths, {x} is the set holding only x.",
    "As shown in [1], latency dropped by half.",
    "Latency fell by half (see [2]).",
    'The vendor wrote that they "was ready" [sic].',
    "Click [link] below.",
    "They told us [the company] would call back.",
    "Read [the docs](https://docs.example.com/start) or [Company Name](https://acme.example).",
    "Write to me at [bob@x.com].",
    "Save 50% off this week, and 100% of the fee is refundable.",
    "Customers usually save 20%-30% on carrier spend, a 5% fee aside.",
    "Search https://example.com/s?q=caf%C3%A9s%20near%20me&utm_source=Email%20Q4 for more.",
    "[EXTERNAL] Re: your invoice",
    "[Action Required] Confirm your seat",
    "[URGENT] [Reminder] [Save the Date] [Customer Success] weekly digest",
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("sentence", NEAR_MISSES)
def test_near_miss_passes(sentence: str, where: str) -> None:
    assert check_content(*placed(where, sentence)) == []


SALES_TEXT = """\
Hi Dana,

I noticed Acme Corp just opened a second warehouse in Reno - congrats! Teams at your stage usually
find that 20%-30% of their carrier spend goes to re-delivery fees [1]. We helped Globex cut that by
41% in one quarter, and the first month is 100% free.

Would a 15-minute call on Thursday 2026-11-26 at 2pm PT work? Here is my calendar:
https://cal.example.com/jo?utm_source=email&utm_campaign=q4%20promo

Or join straight away: https://zoom.us/j/81234567890?pwd=Zk9xT2c4bHdQ (meeting ID 812 3456 7890).

If the timing is off, just reply "later" and I'll circle back next quarter.

Best,
Jo Smith
Account Executive, Shipfast
+1 (415) 555-2671

[1] https://shipfast.example/case-studies/globex
"""

SALES_HTML = """\
<html><head><style>
  body { font-family: Arial, sans-serif; } p { margin: 0 0 12px; } .cta { color: #06c; }
  @media (max-width: 600px) { .wrap { width: 100% !important; } }
</style></head>
<body><div class="wrap" style="width:100%;max-width:600px">
<p>Hi Dana,</p>
<p>Teams at your stage usually find that 20%&ndash;30% of their carrier spend goes to re-delivery
fees.&nbsp;We helped Globex cut that by 41% in one quarter.</p>
<p><a class="cta" href="https://cal.example.com/jo?utm_source=email&amp;utm_campaign=q4%20promo">Pick
a time</a> or <a href="https://zoom.us/j/81234567890?pwd=Zk9xT2c4bHdQ">join now</a>.</p>
<p>Best,<br>Jo &lt;jo@shipfast.example&gt;</p>
<img alt="" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4
2mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==">
</div></body></html>
"""

SUPPORT_TEXT = """\
Hi Sam,

Thanks for the report! The health endpoint answers {"status": "ok", "checks": {"db": "up"}} when
all is well; anything else means the worker is down. To look up one user, call
`GET /v1/users/{id}` with your API key in the `Authorization` header.

Here is a small script that prints every user's greeting:

```python
import requests

for user in requests.get(f"{base_url}/v1/users", timeout=10).json():
    print(f"Hello {name}, your plan is {plan}".format(**user))
```

If the login still fails, reset your password here: https://acme.example/reset (forgot password?
is on the sign-in page too). We recommend a password manager. Passwords must be 12 characters.

Best,
Acme Support
"""

NEWSLETTER_HTML = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Acme Monthly</title>
<style type="text/css">
  table { border-collapse: collapse; } td { padding: 8px; }
  a[href^="tel"] { color: inherit; } .hero h1 { font-size: 28px; }
  /* {{ not a placeholder: CSS comment }} */
</style>
<!--[if mso]><style>td { font-family: Arial; }</style><![endif]-->
<script type="application/ld+json">{"@context": "https://schema.org", "name": "${name}"}</script>
</head>
<body>
<table width="100%" role="presentation"><tr><td class="hero">
<h1>What's new in November</h1>
<p>Shipping labels now print 30% faster [1], and bulk import handles files of 10,000 rows.</p>
<p>Developers: the new endpoint is <code>GET /v1/labels/{label_id}</code>, for example:</p>
<pre><code>curl https://api.acme.example/v1/labels/{label_id} -d '{"format": "pdf"}'</code></pre>
<p>[1] Measured on 2026-10-01 over 1,000,000 labels.</p>
<p><a href="https://acme.example/unsubscribe?u=8f3a2c&amp;list=monthly">Unsubscribe</a> &middot;
<a href="https://acme.example/view?id=1107">View in browser</a></p>
</td></tr></table>
</body></html>
"""


@pytest.mark.parametrize(
    ("subject", "text", "body"),
    [
        ("Re-delivery costs at Acme Corp", SALES_TEXT, SALES_HTML),
        ("Re: [Ticket #4821] Health check failing", SUPPORT_TEXT, None),
        ("[Acme Monthly] What's new in November", None, NEWSLETTER_HTML),
    ],
    ids=["sales", "support", "newsletter"],
)
def test_realistic_email_passes(subject: str, text: str | None, body: str | None) -> None:
    assert check_content(subject, text, body) == []


def test_placeholders_in_code_are_examples_but_not_elsewhere() -> None:
    assert check_content("Hi", "Call `GET /users/{user_id}`; see ```\nf'{first_name}'\n```", None) == []
    assert check_content("Hi", None, "<pre>{{first_name}}</pre><code>{company}</code>") == []
    reasons = check_content("Hi", "Call `GET /users/{user_id}`, {first_name}.", None)
    assert reasons == [Reason(UNRENDERED_TEMPLATE, "text body contains the placeholder {first_name}")]


@pytest.mark.parametrize(
    "body",
    [
        '<p>Hi there,</p><a href="https://acme.example/demo?name={{first_name}}">Book</a>',
        "<p>Hi there,</p><img src='https://img.example/logo.png' alt='{{first_name}}'>",
        "<p>Hi <<first_name>>,</p>",
        "<p>Hi <b>{{first_name}}</b>,</p>",
    ],
)
def test_html_placeholders_in_raw_markup_and_links(body: str) -> None:
    reasons = check_content("Hi", None, body)
    assert [reason.code for reason in reasons] == [UNRENDERED_TEMPLATE]
    assert "first_name" in reasons[0].detail


def test_style_script_and_comments_are_not_read() -> None:
    body = (
        "<style>p { color: red; } .x{margin:0} a[Title] { x: 1 }</style>"
        "<script>const s = `${name}`; if (a) {b}</script><!-- {{preheader}} --><p>Hello.</p>"
    )
    assert check_content("Hi", None, body) == []


def test_placeholder_detail_names_only_the_first_few() -> None:
    reasons = check_content(
        "Hi {{first_name}}",
        "Dear [First Name] at [Company Name], {{first_name}} again, then %CITY% and *|LNAME|*.",
        None,
    )
    assert reasons == [
        Reason(
            UNRENDERED_TEMPLATE,
            "subject contains the placeholder {{first_name}}; "
            "text body contains the placeholders [First Name], [Company Name] (and more)",
        )
    ]


def test_placeholder_holding_a_secret_is_not_quoted() -> None:
    key = "AKIA" + "IOSFODNN7EXAMPLE"
    reasons = check_content("Hi", f"Use ${{{key}}} to sign in.", None)
    assert reasons == [
        Reason(UNRENDERED_TEMPLATE, "text body contains the placeholder ${…}"),
        Reason(SENSITIVE_CONTENT, "text body contains an AWS access key"),
    ]
    assert leaked(key, reasons) == []


# -- sensitive_content --------------------------------------------------------------------------

CARD = "a payment card number"
PRIVATE_KEY = "a private key block"
KEY_BODY = "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2V9\nq8rjXw0VgGL1mJnhkyiJ1tD2WqC4Q7bW+0z1h"
GITHUB = "a GitHub token"
SK = "an API secret key (sk-...)"
SENDGUARD = "a sendguard API token"
PASSWORD = "a password"


def pem(label: str) -> str:
    return f"-----BEGIN {label}-----\n{{}}\n-----END {label}-----"


SECRETS = [
    (CARD, "4111 1111 1111 1111", "Card: {}, exp 12/27, CVC on the back."),
    (CARD, "5555-5555-5555-4444", "Please charge {} for the renewal."),
    (CARD, "4111111111111111", "card={}"),
    (CARD, "378282246310005", "Amex {} works too."),
    (CARD, "3782 822463 10005", "Amex {} works too."),
    (CARD, "6011111111111117", "Discover {}."),
    (CARD, "2223 0031 2200 3222", "Mastercard {}."),
    (CARD, "3530111333300000", "JCB {}."),
    (CARD, "3056 930902 5904", "Diners {}."),
    (PRIVATE_KEY, KEY_BODY, pem("RSA PRIVATE KEY")),
    (PRIVATE_KEY, KEY_BODY, pem("PRIVATE KEY")),
    (PRIVATE_KEY, KEY_BODY, pem("EC PRIVATE KEY")),
    (PRIVATE_KEY, KEY_BODY, pem("OPENSSH PRIVATE KEY")),
    (PRIVATE_KEY, KEY_BODY, pem("ENCRYPTED PRIVATE KEY")),
    (PRIVATE_KEY, KEY_BODY, "Here it is:\n" + pem("PGP PRIVATE KEY BLOCK").replace("\n", "\n\n", 1)),
    ("an AWS access key", "AKIA" + "IOSFODNN7EXAMPLE", "Key id: {}"),
    ("an AWS access key", "ASIA" + "Y34FZKBOKMUTVV7A", "temporary credentials {} expire at noon"),
    ("an AWS secret access key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_access_key = {}"),
    ("an AWS secret access key", "6dfTkKPcPKPt0jLy4LrGWuQbUf6vUULm4A2Aohhh", 'AWS_SECRET_ACCESS_KEY: "{}"'),
    (GITHUB, "ghp_" + "ptgUzEjfebzJ6sZWdoHIxrXl0gqn87b1PZqZ", "token {}"),
    (GITHUB, "gho_" + "ptgUzEjfebzJ6sZWdoHIxrXl0gqn87b1PZqZ", "token {}"),
    (GITHUB, "ghs_" + "ptgUzEjfebzJ6sZWdoHIxrXl0gqn87b1PZqZ", "token {}"),
    (GITHUB, "ghu_" + "ptgUzEjfebzJ6sZWdoHIxrXl0gqn87b1PZqZ", "token {}"),
    (GITHUB, "github_pat_" + "11ABCDEFG0" + "ptgUzEjfebzJ6sZWdoHIxrXl0gqn87b1PZqZ", "GH_TOKEN={}"),
    ("a Slack token", "xoxb-" + "2048-1357924680-" + "VLuOJm5ug1dTorWLN3phv7ls", "bot token {}"),
    ("a Slack token", "xoxp-" + "2048-1357924680-" + "VLuOJm5ug1dTorWLN3phv7ls", "user token {}"),
    ("a Stripe secret key", "sk_" + "live_" + "VLuOJm5ug1dTorWLN3phv7ls", "STRIPE_KEY={}"),
    ("a Stripe secret key", "rk_" + "live_" + "VLuOJm5ug1dTorWLN3phv7ls", "restricted key {}"),
    ("a Google API key", "AIza" + "rmktsO3U9224xf2MvQyGplpErf87038J1ta", "maps key {}"),
    (SK, "sk-" + "proj-6sKT4t2WGmABMsBCkotq0ZcfcDOrHIPESvjRmeA6mOOC", "OPENAI_API_KEY={}"),
    (SK, "sk-" + "6sKT4t2WGmABMsBCkotq0ZcfcDOrHIPESvjRmeA6mOOCrlwB", "key: {}"),
    (SENDGUARD, "sg_8a2fbca98964_" + "wcoP1R17mL86z4BRHS7SnrxA2LJA5msgOzgkHAVt_mk", "Bearer {}"),
    (PASSWORD, "hunter2", "password: {}"),
    (PASSWORD, "Tr0ub4dor&3", "Password = {}"),
    (PASSWORD, "s3cr3t!x", "pwd: {}"),
    (PASSWORD, "482913", "Passcode: {}"),
    (PASSWORD, "Xk29pq!7", "Welcome aboard! Your temporary password is {} - please change it."),
    (PASSWORD, "letmein", "Username: dana\nPassword: {}\nSee you soon."),
    (PASSWORD, "Pa55w0rd", 'Send {{"user": "dana", "password": "{}"}} to log in.'),
    (PASSWORD, "CorrectHorse", "PASSWORD: {}"),
    (PASSWORD, "hunter22", "DB_HOST=db.internal\nDB_PASSWORD={}"),
    (PASSWORD, "Hunter22", "Log in at https://acme.example/login?user=dana&password={} today."),
    (PASSWORD, "Sunshine7", "Password:\n{}"),
]


@pytest.mark.parametrize("where", ["text body", "HTML body"])
@pytest.mark.parametrize(("kind", "value", "template"), SECRETS)
def test_secret_is_flagged_by_kind_never_by_value(kind: str, value: str, template: str, where: str) -> None:
    reasons = check_content(*placed(where, template.format(value)))
    assert reasons == [Reason(SENSITIVE_CONTENT, f"{where} contains {kind}")]
    assert leaked(value, reasons) == []


def test_secret_in_subject_and_in_a_link() -> None:
    assert check_content("Card 4111-1111-1111-1111", None, None) == [
        Reason(SENSITIVE_CONTENT, "subject contains a payment card number")
    ]
    key = "AIza" + "rmktsO3U9224xf2MvQyGplpErf87038J1ta"
    body = f'<p>Here is the map:</p><img src="https://maps.example.com/static?center=Reno&amp;key={key}">'
    reasons = check_content("Map", None, body)
    assert reasons == [Reason(SENSITIVE_CONTENT, "HTML body contains a Google API key")]
    assert leaked(key, reasons) == []


def test_each_kind_is_reported_once_where_first_found() -> None:
    aws = "AKIA" + "IOSFODNN7EXAMPLE"
    text = f"Cards 4111 1111 1111 1111 and 5555555555554444, key {aws}, again {aws}, password: hunter2"
    reasons = check_content("Renewal for 4242 4242 4242 4242", text, f"<p>{text}</p>")
    assert reasons == [
        Reason(SENSITIVE_CONTENT, "subject contains a payment card number"),
        Reason(SENSITIVE_CONTENT, "text body contains an AWS access key"),
        Reason(SENSITIVE_CONTENT, "text body contains a password"),
    ]


CARD_NEAR_MISSES = [
    "Card 4111 1111 1111 1112 was declined.",  # fails Luhn
    "Your order number is 4539148803436468.",  # 16 digits, fails Luhn
    "Reference 1234 5678 1234 5670.",  # Luhn-valid, no card network starts with 1
    "Tracking: 9400 1118 9922 3343 (USPS).",  # Luhn-valid, starts with 9
    "Tracking: 9400 1118 9922 3344 5566 77",
    "UPS 1Z999AA10123456784 arrives Monday.",
    "Call +1 (415) 555-2671 or +44 20 7946 0958.",
    "ISBN 978-3-16-148410-0, also printed as 9783161484100.",
    "The next review is on 2026-11-23 at 10:30.",
    "Invoice 2026-11-23-000123, IBAN DE89 3704 0044 0532 0130 00.",
    "Account 12345678901234567890 is closed.",
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("sentence", CARD_NEAR_MISSES)
def test_card_near_miss_passes(sentence: str, where: str) -> None:
    assert check_content(*placed(where, sentence)) == []


PASSWORD_NEAR_MISSES = [
    "To get back in, reset your password here: it takes a minute.",
    "Forgot password? Use the link on the sign-in page.",
    "We recommend a password manager.",
    "Your password is too weak.",
    "The password is case-sensitive.",
    "Your password has been reset.",
    "Passwords must be at least 12 characters.",
    "Password: click the link below to choose one.",
    "Password: ********",
    "password: <your password>",
    'Send {"user": "dana", "password": "YOUR_PASSWORD"} to log in.',
    "Reset password: https://acme.example/reset",
    "Join: https://zoom.us/j/81234567890?pwd=Zk9xT2c4bHdQ",
    "PWD=/home/dana/projects",
    "Your passcode is in the invite.",
    "Password:\n\nThanks for your patience, we are on it.",
    "I passed your note to our CTO; she is passionate about this.",
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("sentence", PASSWORD_NEAR_MISSES)
def test_password_near_miss_passes(sentence: str, where: str) -> None:
    assert check_content(*placed(where, sentence)) == []


def test_sk_slug_is_not_a_key() -> None:
    slug = "See the guide at /docs/sk-learn-pipelines-for-beginners-part-two."
    assert check_content("Hi", slug, None) == []


# -- hostile input ------------------------------------------------------------------------------

N = 100_000
ADVERSARIAL = [
    "{" * N,
    "{{" + "a" * N,
    "{{a" * (N // 3),
    "[[[[" * (N // 4),
    "[A " * (N // 3),
    "%" * N,
    "%a" * (N // 2),
    "<" * N,
    "<<a" * (N // 3),
    "<style" * (N // 6),
    "<!--" * (N // 4),
    "<a " * (N // 3),
    'href="' * (N // 6),
    "`" * N,
    "1 " * (N // 2),
    "4111 " * (N // 5),
    "1234-" * (N // 5),
    "4" * N,
    "password: " * (N // 10),
    "sk-" + "a1B" * (N // 3),
]


def test_hostile_input_completes() -> None:
    # The per-test timeout is the budget; each of these takes milliseconds when the patterns are linear.
    assert len(ADVERSARIAL) == 20
    for text in ADVERSARIAL:
        reasons = check_content(text[:998], text, text)
        assert all(reason.code in (UNRENDERED_TEMPLATE, SENSITIVE_CONTENT) for reason in reasons)
