"""A corpus for diagnostics redaction: secret forms as they show up in product logs, config dumps,
shell histories and env dumps, and near-miss lines that look alike but hold no secret.

SECRETS: (text, secret) - `secret` must not survive redaction of `text` (text may span lines).
NEAR_MISSES: text that must come out byte for byte as it went in.
The values are made up; formats follow each vendor's documented token shape.
"""

from __future__ import annotations

# Token shapes (fake values of the right length and alphabet).
GH = "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5"
GHO = "gho_" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDc9B"
GH_PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
GL = "glpat-" + "xY7zQ2wE9rT4yU1iO6pA"
SLACK_BOT = "xoxb-" + "2718281828-3141592653589-" + "Qw3rTy6uIo9pAs2dFg5hJk8l"
SLACK_USER = "xoxp-" + "1234567890-1234567890-1234567890123-" + "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
SLACK_HOOK = "https://hooks.slack.com/services/T01ABCDEF/B02GHIJKL/" + "mNoPqRsTuVwXyZ0123456789"
AWS_ID = "AKIA" + "Q3EGRKHTZ7XWJ5NB"
AWS_ID2 = "ASIA" + "Y34FZKBOKMUTVV7A"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
STRIPE_R = "rk_live_" + "51HbTq2eZvKYlo2C0aBcDeFg"
STRIPE_T = "sk_test_" + "51HbTq2eZvKYlo2C0aBcDeFgHiJk"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    + ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
SENDGRID = "SG." + "ngeVfQFYQlKU0ufo8x5d1A" + "." + "TwL2iGABf9DHoTf-09kqeF8tAmbihYzrnopKc-1s5cr"
NPM = "npm_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
PYPI = "pypi-AgEIcHlwaS5vcmc" + "CJDQ5YjJhYjE0LTg5ZDctNDRiOS1hZjNjLWY5ZjE4ZmM2YjFmMAACKlsz" + "LCJhYmNkZWYiXQ"
OPENAI = "sk-" + "proj" + "AbCdEfGhIjKlMnOpQrSt" + "T3BlbkFJ" + "UvWxYzAbCdEfGhIjKlMn"
TWILIO = "SK" + "0123456789abcdef0123456789abcdef"
TWILIO_AC = "AC" + "fedcba9876543210fedcba9876543210"
GOOGLE = "AIza" + "SyA-1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
DISCORD = "MTIzNDU2Nzg5MDEyMzQ1Njc4" + ".GhIjKl." + "MnOpQrStUvWxYzAbCdEfGhIjKlM"
TELEGRAM = "123456789:" + "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw4"
MAILCHIMP = "0123456789abcdef0123456789abcdef" + "-us12"
SQUARE = "sq0csp-" + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
AZURE = (
    "AccountKey=" + "lJzRc1YdHaAA2KCNJJ1tkYwF/+mKK6Ygw0NGe170Xu592euJv2wYUtBlV8z+qnlcNQSnIYVTkLWntUO1F8j8rQ=="
)
PEM_RSA = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA7s1ec2RetQWERTYqwertyQWERTYqwertyQWERTYqwerty\n"
    "q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k8l9z0x1c2v3b4n5m6QWERTYqw\n"
    "-----END RSA PRIVATE KEY-----"
)
PEM_BODY = "MIIEpAIBAAKCAQEA7s1ec2RetQWERTY"

SECRETS: list[tuple[str, str]] = [
    # key=value, the short keywords the old patterns missed
    ("db connect user=app pass=hunter2 host=db1", "hunter2"),
    ("auth: login pwd=Tr0ub4dor&3 ok", "Tr0ub4dor"),
    ("pw=letmein99 (from env)", "letmein99"),
    ("password=correct-horse-battery-staple", "correct-horse"),
    ("PASSWORD=Sup3rS3cret!", "Sup3rS3cret"),
    ("db_password = 'p@ss w0rd'", "p@ss w0rd"),
    ('db_pass="n0t-in-l0gs"', "n0t-in-l0gs"),
    ("admin_passwd=qazwsx123", "qazwsx123"),
    ("passphrase=the quick brown fox", "quick brown fox"),
    ("keystore.password=changeit2026", "changeit2026"),
    ("spring.datasource.password=J8v#kLq2", "J8v#kLq2"),
    ("smtp.pass=mailpw2026", "mailpw2026"),
    ("secret=7f3c9a1e5b2d", "7f3c9a1e5b2d"),
    ("client_secret=abc123def456ghi", "abc123def456ghi"),
    ("api_key=ak_9f8e7d6c5b4a", "ak_9f8e7d6c5b4a"),
    ("apikey: 0a9b8c7d6e5f4a3b", "0a9b8c7d6e5f4a3b"),
    ("x-api-key: k-1234567890abcdef", "k-1234567890abcdef"),
    ("access_key=AKIDEXAMPLE123456", "AKIDEXAMPLE123456"),
    ("secret_key = s3cr3tk3yv4lu3", "s3cr3tk3yv4lu3"),
    ("private_key=0x4c0883a69102937d6231471b5dbb6204fe512961", "0x4c0883a6910293"),
    ("auth_token=tok_live_7a6b5c4d", "tok_live_7a6b5c4d"),
    ("token=abcd1234efgh5678", "abcd1234efgh5678"),
    ("session_token: AQoDYXdzEJr1K2", "AQoDYXdzEJr1K2"),
    ("refresh_token=1//0gLyxT3bQw", "1//0gLyxT3bQw"),
    ("credentials=admin:Adm1nPw", "admin:Adm1nPw"),
    ("contrasena=clave2026", "clave2026"),
    ("service_key=svc-0f1e2d3c", "svc-0f1e2d3c"),
    ("account_key: acct-99887766", "acct-99887766"),
    ("database_key=dbk-5566", "dbk-5566"),
    ("key_pass=kp-1122334455", "kp-1122334455"),
    ("ldap_bind_password => 'Bind#2026'", "Bind#2026"),
    ("vault_token := hvs.CAESIJ1a2b3c4d", "hvs.CAESIJ1a2b3c4d"),
    ("login ok; password: Winter2026! attempts=1", "Winter2026"),
    ("PASSWD: 'p a s s'", "p a s s"),
    ("cfg: {password=xyzzy42, user=bob}", "xyzzy42"),
    ("query ?user=bob&password=s3cret42&db=x", "s3cret42"),
    ("DEBUG settings token=eyJraWQiOiJrMSJ9x", "eyJraWQiOiJrMSJ9x"),
    # JSON
    ('{"pass": "abc123xyz"}', "abc123xyz"),
    ('{"password": "json-pw-1"}', "json-pw-1"),
    ('{"user": "bob", "pwd": "j$0n!"}', "j$0n!"),
    ('{"db_password": "correct horse battery"}', "correct horse"),
    ('{"access_token":"ya29.a0AfH6SMBxyz","expires":3600}', "ya29.a0AfH6SMBxyz"),
    ('{"client_secret": "GOCSPX-1a2b3c4d5e6f"}', "GOCSPX-1a2b3c4d5e6f"),
    ('{"apiKey": "live_5f4e3d2c1b0a"}', "live_5f4e3d2c1b0a"),
    ('{"secret":"s-e-c-r-e-t-123"}', "s-e-c-r-e-t-123"),
    ('{"credentials": {"token": "nested-tok-42"}}', "nested-tok-42"),
    ('  "private_key": "AAAAB3NzaC1yc2EAAAADAQ"', "AAAAB3NzaC1yc2EAAAADAQ"),
    ("{'password': 'pyrepr-pw'}", "pyrepr-pw"),
    # YAML, including values on the next line(s)
    ("password: yamlpw1", "yamlpw1"),
    ("  pass: 'yamlpw2'", "yamlpw2"),
    ("db:\n  password:\n    nextline-secret-1\n  user: bob", "nextline-secret-1"),
    ("smtp:\n  pwd:\n\n      nextline-secret-2\n", "nextline-secret-2"),
    ("tls:\n  private_key: |\n    line-one-of-key\n    line-two-of-key\n  cert: x", "line-two-of-key"),
    ("auth:\n  - token:\n      nextline-token-3\n", "nextline-token-3"),
    ('api_key:\n  "quoted-next-line"\n', "quoted-next-line"),
    ("secret: >-\n  folded-secret-4\n  more-of-it\nnext: 1", "folded-secret-4"),
    ("    client_secret: cs-yaml-5", "cs-yaml-5"),
    # URLs with credentials
    ("dsn=postgresql://admin:pg-S3cret@db.local:5432/app", "pg-S3cret"),
    ("connecting to mysql://root:r00tpw@10.0.0.5/shop", "r00tpw"),
    ("redis://:redis-pw-9@cache:6379/0", "redis-pw-9"),
    ("amqp://guest:rabbit-pw@mq:5672/", "rabbit-pw"),
    ("git clone https://deploy:gh-deploy-pw@git.example.com/x.git", "gh-deploy-pw"),
    ("mongodb+srv://svc:m0ng0pw@cluster0.mongodb.net/db", "m0ng0pw"),
    ("proxy=http://user:pr0xy-pw@proxy:3128", "pr0xy-pw"),
    # command lines
    ("exec: mysql -u root -pS3cretMy db", "S3cretMy"),
    ("mysqldump --single-transaction -uadmin -pDumpPw42 shop", "DumpPw42"),
    ("PGPASSWORD X9pgpass psql -h db -U app", "X9pgpass"),
    ("PGPASSWORD=pg-env-pw pg_dump app", "pg-env-pw"),
    ("exec tool --password s3cr3t-pw --verbose", "s3cr3t-pw"),
    ("run --token tkn_live_42", "tkn_live_42"),
    ("cli --api-key=cli-key-77 --region eu", "cli-key-77"),
    ("sshpass -p 'ssh-pass-1' ssh root@n1", "ssh-pass-1"),
    ("redis-cli -h cache -a redis-cli-pw ping", "redis-cli-pw"),
    ("curl -u admin:curl-pw-3 https://api/", "curl-pw-3"),
    ("curl --user svc:curl-pw-4 -X POST https://x/", "curl-pw-4"),
    ("docker login -u bot --password dockerpw42 registry", "dockerpw42"),
    ("helm install x --set db.password=helm-pw-5", "helm-pw-5"),
    # env dumps
    ("MYSQL_ROOT_PASSWORD=env-root-pw", "env-root-pw"),
    ("export AWS_SECRET_ACCESS_KEY=" + AWS_SECRET, "wJalrXUtnFEMI"),
    ("GITHUB_TOKEN=" + GH, GH),
    ('declare -x DB_PASSWORD="declared-pw"', "declared-pw"),
    ("SECRET_KEY_BASE=9f86d081884c7d659a2feaa0c55ad015", "9f86d081884c7d659a2feaa0c55ad015"),
    ("HOME=/root\nAPI_TOKEN=env-api-tok-1\nPATH=/usr/bin", "env-api-tok-1"),
    ("setenv REDIS_PASSWORD csh-redis-pw", "csh-redis-pw"),
    # headers
    ("GET /v1 Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "eyJhbGci"),
    ("proxy Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ("Authorization: token gh-header-tok-1", "gh-header-tok-1"),
    ("authorization=bearer lower-bearer-2", "lower-bearer-2"),
    # vendor tokens, bare and glued
    ("using key " + AWS_ID + " for s3", AWS_ID),
    ("sts " + AWS_ID2 + " expires", AWS_ID2),
    ("id" + AWS_ID + "x", AWS_ID),
    ("creds_" + AWS_ID + "_v2", AWS_ID),
    ("aws_secret_access_key = " + AWS_SECRET, "wJalrXUtnFEMI"),
    ("clone with " + GH, GH),
    ("oauth " + GHO + " granted", GHO),
    ("pat " + GH_PAT, GH_PAT),
    ("gitlab " + GL + " used", GL),
    ("slack bot " + SLACK_BOT, SLACK_BOT),
    ("slack user " + SLACK_USER, SLACK_USER),
    ("webhook " + SLACK_HOOK, "mNoPqRsTuVwXyZ0123456789"),
    ("charge via " + STRIPE, STRIPE),
    ("restricted " + STRIPE_R, STRIPE_R),
    ("test mode " + STRIPE_T, STRIPE_T),
    ("jwt " + JWT, "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV"),
    ("mail via " + SENDGRID, SENDGRID),
    ("//registry.npmjs.org/:_authToken=" + NPM, NPM),
    ("upload " + PYPI, PYPI),
    ("llm " + OPENAI, OPENAI),
    ("twilio " + TWILIO, TWILIO),
    ("twilio sid " + TWILIO_AC, TWILIO_AC),
    ("maps " + GOOGLE, GOOGLE),
    ("discord " + DISCORD, DISCORD),
    ("telegram bot " + TELEGRAM, TELEGRAM),
    ("mailchimp " + MAILCHIMP, MAILCHIMP),
    ("square " + SQUARE, SQUARE),
    ("DefaultEndpointsProtocol=https;AccountName=x;" + AZURE, "lJzRc1YdHaAA2KCNJJ1tkYwF"),
    # private keys
    (PEM_RSA, PEM_BODY),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        "b3BlbnNzaC1rZXktdjEAAAAA",
    ),
    (
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk\n-----END EC PRIVATE KEY-----",
        "MHcCAQEEIBkg4LVWM9nuwNSk",
    ),
    (
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEG\n-----END PRIVATE KEY-----",
        "MIGHAgEAMBMGByqGSM49AgEG",
    ),
    (
        '{"key": "-----BEGIN PRIVATE KEY-----\\nMIIBVQIBADANone\\n-----END PRIVATE KEY-----"}',
        "MIIBVQIBADANone",
    ),
    (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF0AAAAApgp\n-----END PGP PRIVATE KEY BLOCK-----",
        "lQOYBF0AAAAApgp",
    ),
    ("loaded key -----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG\n", "MIIFHzBJBgkqhkiG"),
]

NEAR_MISSES: list[str] = [
    "2026-11-23T10:00:00Z n1 app[1]: monkey keyboard passage basically fine",
    "tests passed: 42, failed: 0",
    "bypass=1 compass=north",
    "the user passed the check",
    "passing grade; passenger count 3",
    "keyboard layout: us",
    "monkey=3 donkey=4",
    "tokenizer: bert-base-uncased",
    "secretary: Alice",
    "author: bob",
    "password_policy_enabled",
    "password reset requested for user bob",
    "please enter your password",
    "Password changed successfully",
    "token expired, refreshing",
    "tokens processed: 1200",
    "secret rotation scheduled for 2026-12-01",
    "secrets manager reachable",
    "the key to success is caching",
    "primary key violation on table users",
    "keyspace: system",
    "KEY_ID_COLUMN created",
    "api gateway returned 200",
    "credential check passed",
    "password: null",
    "password: ********",
    "password = <redacted>",
    "token: ${API_TOKEN}",
    "secret: {{ vault.secret }}",
    "password=true",
    "pass: false",
    "token: none",
    "PWD=/home/bob/project",
    "OLDPWD=/var/tmp",
    "pwdutils version 3.2",
    "stopwatch: 1.2 s",
    "upward trend in latency",
    "a url https://example.com/path?x=1 without credentials",
    "https://docs.example.com/auth/login",
    "ssh://git@github.com/org/repo.git",
    "mailto:support@example.com",
    "user@example.com logged in",
    "GET /api/v1/users?page=2&limit=50 200",
    "POST /login 302 12ms",
    "mysql -u root -p db   (prompted)",
    "mysql --port 3306 --host db",
    "psql -h db -U app -d shop",
    "curl -s https://example.com/health",
    "curl -u admin https://example.com/",
    "ssh -p 2222 root@n1",
    "scp -P 22 file n1:/tmp",
    "redis-cli -h cache ping",
    "docker run -p 8080:80 nginx",
    "kubectl get pods -n kube-system",
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "HOME=/root",
    "SHELL=/bin/bash",
    "LANG=en_US.UTF-8",
    "TERM=xterm-256color",
    "USER=root",
    "HOSTNAME=n1.cluster.local",
    "TZ=Europe/Berlin",
    "commit 3f2a1b9c4d5e6f708192a3b4c5d6e7f809a1b2c3",
    "sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "md5 d41d8cd98f00b204e9800998ecf8427e",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "request_id=8c3f9e2a-71b4-4d2e-9c1a-5b6d7e8f9a0b",
    "trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
    "-----BEGIN CERTIFICATE-----",
    "MIIBcertificatebodyline",
    "-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl upkeep",
    "host key fingerprint SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8",
    "version 9.10.0 -> 9.10.1",
    "upgraded 9.8.0 -> 9.10.0 in 2.1 s",
    "disk free: 10737418240",
    "load average: 0.42 0.38 0.30",
    "Connection from 127.0.0.1 port 51234",
    "Accepted publickey for upkeep from 127.0.0.1 port 40022 ssh2",
    "pam_unix(sshd:session): session opened for user upkeep",
    "AKIA is the prefix of AWS access key ids",
    "AKIAEXAMPLE is too short to be a key",
    "ghp_ prefix documented at github",
    "xoxb- tokens are Slack bot tokens",
    "sk_live_ keys must never be logged",
    "eyJ starts every JWT header",
    "The quick brown fox jumps over the lazy dog",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit",
    'level=info msg="health ok" node=n1',
    'level=warn msg="retrying" attempt=2 delay=1s',
    "ts=2026-11-23T10:00:00Z caller=main.go:42 msg=started",
    '{"level": "info", "msg": "started", "port": 8443}',
    '{"user": "bob", "role": "admin", "active": true}',
    '{"passed": 12, "failed": 0}',
    '{"keyboard": "us", "locale": "en"}',
    "status: ok",
    "  replicas: 3",
    "  image: nginx:1.22",
    "env:\n  - name: LOG_LEVEL\n    value: debug",
    "passwords must be at least 12 characters",
    "the token bucket refilled",
    "keystroke logging disabled",
    "turnkey install complete",
    "hockey scores loaded",
    "compass heading 270",
    "Passau, Germany",
    "PASSPORT_OFFICE=closed",
    "description: |",
    "  multi-line text follows",
    "notes: >-",
    "password_hint_shown: false",
    "max_tokens: 4096",
    "token_type: bearer",
    "tokenize=true",
    "secret_santa_list_published",
    "keycloak realm imported",
    "keyring unlocked by the user",
    "apikeys table migrated",
    "the pass through filter",
    "Mountain pass closed due to snow",
    "--pass-through mode enabled",
    "--passive-mode",
    "pw_min_length=12",
    "hotkey bound to ctrl+k",
    "jwt library loaded",
    "bearer capacity 10 t",
    "basic plan selected",
    "curl/7.88.1",
    "mysql 8.0.35 started",
    "sshpass not installed",
    "redis-cli version 7.2",
    "BEGIN TRANSACTION",
    "-----BEGIN RSA PUBLIC KEY-----",
    "ACME corp ACCOUNT 0001",
    "SKU 1234-5678 in stock",
    "build 20261123.1 tagged",
]
