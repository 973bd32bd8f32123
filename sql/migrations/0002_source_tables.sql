-- The source tables whose aggregates we cache (the demo schema).
-- IF NOT EXISTS: on a database that already has these tables we use them as they are.

CREATE TABLE IF NOT EXISTS public.experts (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL,
  specialty text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.expert_sessions (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  expert_id bigint NOT NULL REFERENCES public.experts (id) ON DELETE CASCADE,
  started_at timestamptz NOT NULL,
  duration_minutes integer NOT NULL CHECK (duration_minutes >= 0),
  rating numeric(2,1) CHECK (rating BETWEEN 0 AND 5),
  status text NOT NULL CHECK (status IN ('scheduled', 'completed', 'cancelled', 'no_show'))
);
-- Per-expert statistics read every session of one expert.
CREATE INDEX IF NOT EXISTS expert_sessions_expert_id_started_at_idx
  ON public.expert_sessions (expert_id, started_at);

CREATE TABLE IF NOT EXISTS public.products (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL,
  category text NOT NULL,
  price numeric(10,2) NOT NULL CHECK (price >= 0)
);

CREATE TABLE IF NOT EXISTS public.orders (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  product_id bigint NOT NULL REFERENCES public.products (id) ON DELETE CASCADE,
  quantity integer NOT NULL CHECK (quantity > 0),
  unit_price numeric(10,2) NOT NULL CHECK (unit_price >= 0),
  ordered_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_product_id_ordered_at_idx ON public.orders (product_id, ordered_at);
CREATE INDEX IF NOT EXISTS orders_ordered_at_idx ON public.orders (ordered_at);
