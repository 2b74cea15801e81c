-- Registered GPU nodes: each runs privaterouter-gpu-agent (health and NVML figures at agent_url)
-- and an OpenAI-compatible inference server (inference_url). The agent's token is never stored:
-- agent_token_env names an environment variable of the API process that holds it.
CREATE TABLE gpu_nodes (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name             text NOT NULL UNIQUE,
    agent_url        text NOT NULL,
    inference_url    text NOT NULL,
    pool             text NOT NULL DEFAULT 'default',
    agent_token_env  text,
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now()
);
