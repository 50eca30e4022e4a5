-- PostgreSQL twin of ../0010_llm_budget.sql.
CREATE TABLE llm_budget_days (
    route     TEXT NOT NULL,
    agent     TEXT NOT NULL,
    day       BIGINT NOT NULL,
    requests  BIGINT NOT NULL,
    tokens    BIGINT NOT NULL,
    PRIMARY KEY (route, agent)
);
