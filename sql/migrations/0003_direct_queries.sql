-- The direct (uncached) queries: the expensive aggregates the cache serves, and
-- what the application falls back to when the cache fails.
-- Both return a jsonb array with one object per expert / product, ordered by id.
-- NULL means all; an id that does not exist gives an empty array.

CREATE FUNCTION public.get_expert_sessions_with_stats(p_expert_id bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  result jsonb;
BEGIN
  IF p_expert_id IS NOT NULL AND p_expert_id <= 0 THEN
    RAISE EXCEPTION 'p_expert_id must be a positive expert id or NULL for all experts, got %', p_expert_id
      USING ERRCODE = '22023';
  END IF;
  -- Two statements instead of "p_expert_id IS NULL OR ...": each gets a plan
  -- fit for its case (index lookup for one expert, hash aggregate for all).
  IF p_expert_id IS NULL THEN
    SELECT COALESCE(jsonb_agg(row_json ORDER BY expert_id), '[]'::jsonb) INTO result FROM (
      SELECT e.id AS expert_id, jsonb_build_object(
        'expert_id', e.id, 'name', e.name, 'specialty', e.specialty,
        'session_count', COALESCE(s.session_count, 0),
        'completed_count', COALESCE(s.completed_count, 0),
        'average_rating', s.average_rating,
        'total_minutes', COALESCE(s.total_minutes, 0),
        'last_session_at', s.last_session_at) AS row_json
      FROM public.experts e
      LEFT JOIN (
        SELECT expert_id, count(*) AS session_count,
               count(*) FILTER (WHERE status = 'completed') AS completed_count,
               round(avg(rating), 2) AS average_rating,
               sum(duration_minutes) AS total_minutes,
               max(started_at) AS last_session_at
        FROM public.expert_sessions GROUP BY expert_id
      ) s ON s.expert_id = e.id
    ) per_expert;
  ELSE
    SELECT COALESCE(jsonb_agg(jsonb_build_object(
        'expert_id', e.id, 'name', e.name, 'specialty', e.specialty,
        'session_count', s.session_count,
        'completed_count', s.completed_count,
        'average_rating', s.average_rating,
        'total_minutes', s.total_minutes,
        'last_session_at', s.last_session_at)), '[]'::jsonb) INTO result
    FROM public.experts e
    CROSS JOIN LATERAL (
      SELECT count(*) AS session_count,
             count(*) FILTER (WHERE status = 'completed') AS completed_count,
             round(avg(rating), 2) AS average_rating,
             COALESCE(sum(duration_minutes), 0) AS total_minutes,
             max(started_at) AS last_session_at
      FROM public.expert_sessions WHERE expert_id = e.id
    ) s
    WHERE e.id = p_expert_id;
  END IF;
  RETURN result;
END
$$;
COMMENT ON FUNCTION public.get_expert_sessions_with_stats(bigint) IS
  'Direct query: per expert session count, completed count, average rating, total minutes, last session.';

CREATE FUNCTION public.get_product_performance(p_product_id bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  result jsonb;
  since timestamptz := pg_catalog.now() - interval '30 days';
BEGIN
  IF p_product_id IS NOT NULL AND p_product_id <= 0 THEN
    RAISE EXCEPTION 'p_product_id must be a positive product id or NULL for all products, got %', p_product_id
      USING ERRCODE = '22023';
  END IF;
  IF p_product_id IS NULL THEN
    SELECT COALESCE(jsonb_agg(row_json ORDER BY product_id), '[]'::jsonb) INTO result FROM (
      SELECT p.id AS product_id, jsonb_build_object(
        'product_id', p.id, 'name', p.name, 'category', p.category,
        'units_sold', COALESCE(o.units_sold, 0),
        'revenue', COALESCE(o.revenue, 0),
        'order_count', COALESCE(o.order_count, 0),
        'revenue_30d', COALESCE(o.revenue_30d, 0),
        'last_order_at', o.last_order_at) AS row_json
      FROM public.products p
      LEFT JOIN (
        SELECT product_id, sum(quantity) AS units_sold,
               sum(quantity * unit_price) AS revenue,
               count(*) AS order_count,
               COALESCE(sum(quantity * unit_price) FILTER (WHERE ordered_at >= since), 0) AS revenue_30d,
               max(ordered_at) AS last_order_at
        FROM public.orders GROUP BY product_id
      ) o ON o.product_id = p.id
    ) per_product;
  ELSE
    SELECT COALESCE(jsonb_agg(jsonb_build_object(
        'product_id', p.id, 'name', p.name, 'category', p.category,
        'units_sold', o.units_sold, 'revenue', o.revenue, 'order_count', o.order_count,
        'revenue_30d', o.revenue_30d, 'last_order_at', o.last_order_at)), '[]'::jsonb) INTO result
    FROM public.products p
    CROSS JOIN LATERAL (
      SELECT COALESCE(sum(quantity), 0) AS units_sold,
             COALESCE(sum(quantity * unit_price), 0) AS revenue,
             count(*) AS order_count,
             COALESCE(sum(quantity * unit_price) FILTER (WHERE ordered_at >= since), 0) AS revenue_30d,
             max(ordered_at) AS last_order_at
      FROM public.orders WHERE product_id = p.id
    ) o
    WHERE p.id = p_product_id;
  END IF;
  RETURN result;
END
$$;
COMMENT ON FUNCTION public.get_product_performance(bigint) IS
  'Direct query: per product units sold, revenue, order count, revenue in the last 30 days, last order.';
