# shellcheck shell=bash
# The end of scripts/up (sourced after lib/stack.sh): the first steps printed for a newcomer,
# and with --demo, those steps carried out once against the demo profile's stand-in model.
# Uses from scripts/up: DOMAIN, TLS_PATH, DEMO; from lib/stack.sh: dc, env_get, public_url.

# curl as a client on this host would call api.<domain>: through nginx's published port,
# with the development CA when the certificate is the development one.
api_curl() { # CURL_ARGS... (the last one is the path, e.g. /v1/models)
    local port addr args=("${@:1:$#-1}") path=${!#}
    port=$(env_get NGINX_HTTPS_PORT)
    port=${port:-443}
    addr=$(env_get NGINX_BIND_ADDR)
    [[ -n "$addr" && "$addr" != 0.0.0.0 ]] || addr=127.0.0.1
    local ca=()
    [[ ! -f "$TLS_PATH/dev-ca.pem" ]] || ca=(--cacert "$TLS_PATH/dev-ca.pem")
    curl -sS --max-time 60 "${ca[@]}" --resolve "api.$DOMAIN:$port:$addr" "${args[@]}" \
        "https://api.$DOMAIN:$port$path"
}

# A JSON string field of a one-line JSON document (no escapes in the values read here).
json_field() { # NAME <<<JSON
    sed -n "s/.*\"$1\":[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" | head -n 1
}

# On an empty database: make the first admin, top it up with 5 USD and run one completion on
# model demo-echo through nginx, TLS, the API and LiteLLM. Dies when the completion fails.
demo_first_completion() {
    say "demo: a first completion through nginx, the API, LiteLLM and demo-echo"
    local users created user_id key body reply
    # shellcheck disable=SC2016 # expanded inside the postgres container
    users=$(dc exec -T postgres sh -c 'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "SELECT count(*) FROM users"') ||
        die "could not count the users in the database (output above)"
    if [[ "${users//[[:space:]]/}" != 0 ]]; then
        ok "demo: the database has users already, so no demo admin is made; follow the steps below with your key"
        return 0
    fi
    local log
    log=$(mktemp)
    # Its log lines (stderr) only matter when it fails.
    created=$(dc exec -T api privaterouter-api admin create-user --email "admin@$DOMAIN" --admin 2>"$log") || {
        cat "$log" >&2
        rm -f "$log"
        die "demo: admin create-user failed (output above)"
    }
    rm -f "$log"
    user_id=$(json_field user_id <<<"$created")
    key=$(json_field api_key <<<"$created")
    [[ -n "$user_id" && -n "$key" ]] || die "demo: unexpected output of admin create-user: $created"
    body=$(api_curl -X POST -H "Authorization: Bearer $key" -H "Idempotency-Key: scripts-up-demo-topup" \
        -H 'Content-Type: application/json' -w '\n%{http_code}' \
        -d '{"kind": "topup", "amount_usd": "5.00", "reason": "scripts/up --demo"}' \
        "/api/admin/users/$user_id/credits") || die "demo: the top-up request failed"
    [[ "${body##*$'\n'}" == 20? ]] || die "demo: the top-up answered ${body##*$'\n'}: ${body%$'\n'*}"
    body=$(api_curl -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -w '\n%{http_code}' \
        -d '{"model": "demo-echo", "messages": [{"role": "user", "content": "Hello from scripts/up --demo"}]}' \
        /v1/chat/completions) || die "demo: the completion request failed"
    [[ "${body##*$'\n'}" == 200 ]] || die "demo: the completion answered ${body##*$'\n'}: ${body%$'\n'*}"
    reply=$(json_field content <<<"${body%$'\n'*}")
    ok "demo: completion through nginx -> api -> litellm -> demo-echo answered: $reply"
    cat <<EOF
  Your first admin (made by --demo): admin@$DOMAIN, user id $user_id, credited 5.00 USD.
  API key, shown once, keep it:  ${B}$key${N}
EOF
}

print_first_steps() {
    local api url api_ctr model ca_opt="" sdk_ctx="" rel_ca
    url=$(public_url api)
    url=${url%/}
    api_ctr=$(docker inspect -f '{{.Name}}' "$(service_container api)" 2>/dev/null || true)
    api_ctr=${api_ctr#/}
    model=default
    [[ "$DEMO" != on ]] || model=demo-echo
    if [[ -f "$TLS_PATH/dev-ca.pem" ]]; then
        rel_ca=${TLS_PATH#"$ROOT"/}/dev-ca.pem
        ca_opt="--cacert $rel_ca "
        sdk_ctx=", http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=\"$rel_ca\"))"
    fi
    api="${api_ctr:-<api container>}"
    cat <<EOF

${B}First steps${N} (from the repository root):
  1. An admin account (prints {"user_id", "api_key"}; the key is shown once):
       docker exec $api privaterouter-api admin create-user --email you@example.com --admin
       USER_ID=<user_id>; KEY=<api_key>
  2. A top-up for that user (USD; the Idempotency-Key makes a retry safe):
       curl ${ca_opt}-X POST $url/api/admin/users/\$USER_ID/credits -H "Authorization: Bearer \$KEY" \\
            -H "Idempotency-Key: first-topup" -H 'Content-Type: application/json' \\
            -d '{"kind": "topup", "amount_usd": "10.00", "reason": "first top-up"}'
  3. A completion with curl:
       curl ${ca_opt}$url/v1/chat/completions -H "Authorization: Bearer \$KEY" -H 'Content-Type: application/json' \\
            -d '{"model": "$model", "messages": [{"role": "user", "content": "Hello"}]}'
     and with the OpenAI Python SDK (pip install openai):
       KEY=\$KEY python3 -c 'import os, ssl, openai; c = openai.OpenAI(base_url="$url/v1", api_key=os.environ["KEY"]$sdk_ctx); print(c.chat.completions.create(model="$model", messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)'
EOF
    if [[ "$DEMO" != on ]]; then
        echo "  Model \"default\" goes to LiteLLM's upstream: set LITELLM_UPSTREAM_MODEL/_API_BASE/_API_KEY in ${ENV_FILE#"$ROOT"/} (vLLM or Ollama: openai/<model> + http://host:port/v1; OpenAI: openai/gpt-4o-mini + your key, base https://api.openai.com/v1), or try scripts/up --demo."
    fi
}
