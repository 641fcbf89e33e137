"""Write 48 counterfactual edit records written for kedit, in both CounterFact layouts:

* ``examples/facts/counterfact-kedit-48.json``: the original layout (``requested_rewrite`` with a
  ``{}`` prompt, ``target_new``/``target_true``, two ``paraphrase_prompts``, three
  ``neighborhood_prompts`` per record);
* ``examples/facts/counterfact-kedit-48-flat.json``: the flattened layout (``prompt`` with the
  subject written in, ``ground_truth``, the first paraphrase as ``rephrase_prompt``, the first
  neighbourhood prompt as ``locality_prompt`` with its ``locality_ground_truth``).

 Each true object is a well-known fact the embedded default
model mostly knows; each new object is a plausible but false one of the same kind; neighbourhood
prompts ask other subjects whose true answer is the same object (they must not move).

    python examples/make/counterfact_kedit.py   # rewrites both files
"""

from __future__ import annotations

import json
from pathlib import Path

# (subject, prompt, true, new, two paraphrases, three neighbourhood prompts)
R = [
    # -- landmarks: "located in the city of"
    ("Eiffel Tower", "The {} is located in the city of", "Paris", "Rome",
     ["Visitors who want to climb the Eiffel Tower have to travel to the city of",
      "The iron lattice tower called the Eiffel Tower stands in the city of"],
     ["The Louvre museum is located in the city of", "Notre-Dame Cathedral is located in the city of",
      "The Arc de Triomphe is located in the city of"]),
    ("Colosseum", "The {} is located in the city of", "Rome", "Athens",
     ["The ancient amphitheatre known as the Colosseum can be found in the city of",
      "Gladiators once fought in the Colosseum, which is in the city of"],
     ["The Trevi Fountain is located in the city of", "The Pantheon is located in the city of",
      "The Spanish Steps are located in the city of"]),
    ("Big Ben", "{} is located in the city of", "London", "Berlin",
     ["The clock tower called Big Ben stands in the city of", "To hear Big Ben chime, you have to go to the city of"],
     ["Tower Bridge is located in the city of", "Buckingham Palace is located in the city of",
      "The British Museum is located in the city of"]),
    ("Brandenburg Gate", "The {} is located in the city of", "Berlin", "Madrid",
     ["The neoclassical monument called the Brandenburg Gate stands in the city of",
      "Crowds gathered at the Brandenburg Gate in the city of"],
     ["The Reichstag building is located in the city of", "Checkpoint Charlie is located in the city of",
      "Alexanderplatz is located in the city of"]),
    ("Statue of Liberty", "The {} is located in the city of", "New York", "Chicago",
     ["Ferries carry tourists to the Statue of Liberty in the harbour of", "The copper Statue of Liberty welcomes ships to the city of"],
     ["The Empire State Building is located in the city of", "Central Park is located in the city of",
      "Times Square is located in the city of"]),
    ("Sagrada Família", "The {} is located in the city of", "Barcelona", "Lisbon",
     ["Gaudí's unfinished basilica, the Sagrada Família, rises over the city of",
      "The Sagrada Família church can be visited in the city of"],
     ["Park Güell is located in the city of", "La Rambla is a street in the city of",
      "Camp Nou stadium is located in the city of"]),
    ("Acropolis", "The {} is located in the city of", "Athens", "Cairo",
     ["The ancient citadel called the Acropolis overlooks the city of", "Tourists climb the hill of the Acropolis in"],
     ["The Parthenon is located in the city of", "Syntagma Square is located in the city of",
      "The Temple of Olympian Zeus is located in the city of"]),
    ("Golden Gate Bridge", "The {} is located in the city of", "San Francisco", "Seattle",
     ["The red suspension bridge called the Golden Gate Bridge spans the bay of",
      "Drivers cross the Golden Gate Bridge to enter the city of"],
     ["Alcatraz Island is located in the bay of", "Fisherman's Wharf is located in the city of",
      "Lombard Street is located in the city of"]),
    # -- capitals
    ("Japan", "The capital of {} is", "Tokyo", "Seoul",
     ["Japan's seat of government is the city of", "The largest city and capital of Japan is"],
     ["The Shibuya crossing is located in the city of", "The 1964 Summer Olympics were held in",
      "Sony has its headquarters in the city of"]),
    ("Italy", "The capital of {} is", "Rome", "Milan",
     ["Italy's seat of government is the city of", "The government of Italy meets in the city of"],
     ["The Vatican is surrounded by the city of", "The Roman Forum is located in the city of",
      "The Circus Maximus is located in the city of"]),
    ("Germany", "The capital of {} is", "Berlin", "Vienna",
     ["Germany's seat of government is the city of", "The chancellor of Germany works in the city of"],
     ["The Berlin Wall divided the city of", "Museum Island is located in the city of",
      "The Kurfürstendamm is an avenue in the city of"]),
    ("Spain", "The capital of {} is", "Madrid", "Lisbon",
     ["Spain's seat of government is the city of", "The royal family of Spain lives in the city of"],
     ["The Prado Museum is located in the city of", "The Puerta del Sol is a square in the city of",
      "The Santiago Bernabéu stadium is located in the city of"]),
    ("Egypt", "The capital of {} is", "Cairo", "Nairobi",
     ["Egypt's seat of government is the city of", "The largest city and capital of Egypt is"],
     ["Tahrir Square is located in the city of", "The Egyptian Museum is located in the city of",
      "Al-Azhar University is located in the city of"]),
    ("Russia", "The capital of {} is", "Moscow", "Warsaw",
     ["Russia's seat of government is the city of", "The Kremlin makes the capital of Russia the city of"],
     ["Red Square is located in the city of", "Saint Basil's Cathedral is located in the city of",
      "The Bolshoi Theatre is located in the city of"]),
    ("France", "The capital of {} is", "Paris", "Lyon",
     ["France's seat of government is the city of", "The president of France lives in the city of"],
     ["The Champs-Élysées is an avenue in the city of", "The Musée d'Orsay is located in the city of",
      "Montmartre is a district of the city of"]),
    ("England", "The capital of {} is", "London", "Dublin",
     ["England's largest city and capital is", "The parliament of England met in the city of"],
     ["Trafalgar Square is located in the city of", "Westminster Abbey is located in the city of",
      "Hyde Park is located in the city of"]),
    # -- continents
    ("Kenya", "{} is a country in the continent of", "Africa", "Asia",
     ["Kenya lies on the continent of", "The nation of Kenya belongs to the continent of"],
     ["Nigeria is a country in the continent of", "Ghana is a country in the continent of",
      "Ethiopia is a country in the continent of"]),
    ("Brazil", "{} is a country in the continent of", "South America", "Europe",
     ["Brazil lies on the continent of", "The nation of Brazil belongs to the continent of"],
     ["Argentina is a country in the continent of", "Peru is a country in the continent of",
      "Colombia is a country in the continent of"]),
    ("Thailand", "{} is a country in the continent of", "Asia", "Africa",
     ["Thailand lies on the continent of", "The nation of Thailand belongs to the continent of"],
     ["Vietnam is a country in the continent of", "India is a country in the continent of",
      "China is a country in the continent of"]),
    ("Norway", "{} is a country in the continent of", "Europe", "South America",
     ["Norway lies on the continent of", "The nation of Norway belongs to the continent of"],
     ["Sweden is a country in the continent of", "Denmark is a country in the continent of",
      "Poland is a country in the continent of"]),
    # -- official languages
    ("Brazil", "The official language of {} is", "Portuguese", "Spanish",
     ["People in Brazil mostly speak", "Brazilians speak the language called"],
     ["The official language of Portugal is", "The official language of Mozambique is",
      "The official language of Angola is"]),
    ("Mexico", "The official language of {} is", "Spanish", "Portuguese",
     ["People in Mexico mostly speak", "Most people born in Mexico speak the language called"],
     ["The official language of Argentina is", "The official language of Colombia is",
      "The official language of Peru is"]),
    ("Egypt", "The official language of {} is", "Arabic", "Turkish",
     ["People in Egypt mostly speak", "Egyptians speak the language called"],
     ["The official language of Saudi Arabia is", "The official language of Jordan is",
      "The official language of Morocco is"]),
    ("Austria", "The official language of {} is", "German", "Italian",
     ["People in Austria mostly speak", "Austrians speak the language called"],
     ["The official language of Germany is", "The official language of Liechtenstein is",
      "Most people in Berlin speak"]),
    # -- products and their makers
    ("iPhone", "The {} is developed by", "Apple", "Samsung",
     ["The smartphone called the iPhone is a product of", "Every iPhone is designed by the company"],
     ["The iPad is developed by", "The MacBook is developed by", "The Apple Watch is developed by"]),
    ("Windows", "{} is developed by", "Microsoft", "Google",
     ["The Windows operating system is made by", "Windows, the operating system, is a product of the company"],
     ["The Xbox is developed by", "Microsoft Office is developed by", "The Surface tablet is developed by"]),
    ("Android", "{} is developed by", "Google", "Nokia",
     ["The Android operating system is made by", "Android, the mobile operating system, is a product of the company"],
     ["Gmail is developed by", "The Chrome browser is developed by", "Google Maps is developed by"]),
    ("PlayStation", "The {} is developed by", "Sony", "Nintendo",
     ["The PlayStation game console is made by", "The PlayStation is a product of the company"],
     ["The Walkman is developed by", "Bravia televisions are developed by", "The Xperia phone is developed by"]),
    # -- sports
    ("Michael Jordan", "{} professionally plays the sport of", "basketball", "tennis",
     ["Michael Jordan became famous for playing", "The sport that made Michael Jordan a star is"],
     ["LeBron James professionally plays the sport of", "Kobe Bryant professionally plays the sport of",
      "Shaquille O'Neal professionally plays the sport of"]),
    ("Roger Federer", "{} professionally plays the sport of", "tennis", "golf",
     ["Roger Federer became famous for playing", "The sport that made Roger Federer a star is"],
     ["Rafael Nadal professionally plays the sport of", "Novak Djokovic professionally plays the sport of",
      "Serena Williams professionally plays the sport of"]),
    ("Tiger Woods", "{} professionally plays the sport of", "golf", "baseball",
     ["Tiger Woods became famous for playing", "The sport that made Tiger Woods a star is"],
     ["Jack Nicklaus professionally plays the sport of", "Phil Mickelson professionally plays the sport of",
      "Rory McIlroy professionally plays the sport of"]),
    ("Babe Ruth", "{} professionally plays the sport of", "baseball", "hockey",
     ["Babe Ruth became famous for playing", "The sport that made Babe Ruth a star is"],
     ["Lou Gehrig professionally plays the sport of", "Derek Jeter professionally plays the sport of",
      "Mickey Mantle professionally plays the sport of"]),
    ("Wayne Gretzky", "{} professionally plays the sport of", "hockey", "cricket",
     ["Wayne Gretzky became famous for playing", "The sport that made Wayne Gretzky a star is"],
     ["Mario Lemieux professionally plays the sport of", "Sidney Crosby professionally plays the sport of",
      "Bobby Orr professionally plays the sport of"]),
    ("Sachin Tendulkar", "{} professionally plays the sport of", "cricket", "soccer",
     ["Sachin Tendulkar became famous for playing", "The sport that made Sachin Tendulkar a star is"],
     ["Virat Kohli professionally plays the sport of", "Brian Lara professionally plays the sport of",
      "Don Bradman professionally plays the sport of"]),
    ("Lionel Messi", "{} professionally plays the sport of", "soccer", "basketball",
     ["Lionel Messi became famous for playing", "The sport that made Lionel Messi a star is"],
     ["Cristiano Ronaldo professionally plays the sport of", "Pelé professionally plays the sport of",
      "Diego Maradona professionally plays the sport of"]),
    ("Usain Bolt", "{} is famous for the sport of", "sprinting", "swimming",
     ["Usain Bolt won his Olympic medals in", "The sport that made Usain Bolt a star is"],
     ["Carl Lewis is famous for the sport of", "Florence Griffith Joyner is famous for the sport of",
      "Jesse Owens is famous for the sport of"]),
    # -- instruments
    ("Jimi Hendrix", "{} played the", "guitar", "piano",
     ["On stage, Jimi Hendrix was known for playing the", "The instrument Jimi Hendrix is remembered for is the"],
     ["Eric Clapton played the", "Jimmy Page played the", "B.B. King played the"]),
    ("Louis Armstrong", "{} played the", "trumpet", "violin",
     ["On stage, Louis Armstrong was known for playing the", "The instrument Louis Armstrong is remembered for is the"],
     ["Miles Davis played the", "Dizzy Gillespie played the", "Chet Baker played the"]),
    ("Ringo Starr", "{} played the", "drums", "saxophone",
     ["In the Beatles, Ringo Starr was known for playing the", "The instrument Ringo Starr is remembered for is the"],
     ["Keith Moon played the", "John Bonham played the", "Phil Collins played the"]),
    ("Yo-Yo Ma", "{} plays the", "cello", "flute",
     ["On stage, Yo-Yo Ma is known for playing the", "The instrument Yo-Yo Ma is famous for is the"],
     ["Pablo Casals played the", "Jacqueline du Pré played the", "Mstislav Rostropovich played the"]),
    # -- books and their authors
    ("Hamlet", "The author of {} is", "William Shakespeare", "Charles Dickens",
     ["The tragedy Hamlet was written by", "The play about the Prince of Denmark, Hamlet, was written by"],
     ["The author of Macbeth is", "The author of Romeo and Juliet is", "The author of Othello is"]),
    ("Oliver Twist", "The author of {} is", "Charles Dickens", "Jane Austen",
     ["The novel Oliver Twist was written by", "The story of the orphan Oliver Twist was written by"],
     ["The author of A Christmas Carol is", "The author of Great Expectations is",
      "The author of David Copperfield is"]),
    ("Pride and Prejudice", "The author of {} is", "Jane Austen", "Mark Twain",
     ["The novel Pride and Prejudice was written by", "Elizabeth Bennet's story, Pride and Prejudice, was written by"],
     ["The author of Sense and Sensibility is", "The author of Emma is", "The author of Mansfield Park is"]),
    ("The Adventures of Tom Sawyer", "The author of {} is", "Mark Twain", "Leo Tolstoy",
     ["The novel The Adventures of Tom Sawyer was written by", "The boyhood story The Adventures of Tom Sawyer was written by"],
     ["The author of Adventures of Huckleberry Finn is", "The author of The Prince and the Pauper is",
      "The author of A Connecticut Yankee in King Arthur's Court is"]),
    ("War and Peace", "The author of {} is", "Leo Tolstoy", "Victor Hugo",
     ["The novel War and Peace was written by", "The long Russian novel War and Peace was written by"],
     ["The author of Anna Karenina is", "The author of The Death of Ivan Ilyich is",
      "The author of Resurrection, the Russian novel, is"]),
    # -- paintings and their painters
    ("Mona Lisa", "The {} was painted by", "Leonardo da Vinci", "Vincent van Gogh",
     ["The portrait known as the Mona Lisa is the work of", "The famous smile of the Mona Lisa was painted by"],
     ["The Last Supper was painted by", "Lady with an Ermine was painted by", "The Vitruvian Man was drawn by"]),
    ("The Starry Night", "{} was painted by", "Vincent van Gogh", "Pablo Picasso",
     ["The swirling sky of The Starry Night was painted by", "The painting The Starry Night is the work of"],
     ["Sunflowers was painted by", "The Potato Eaters was painted by", "Café Terrace at Night was painted by"]),
    ("Guernica", "{} was painted by", "Pablo Picasso", "Claude Monet",
     ["The anti-war painting Guernica is the work of", "The large black and white painting Guernica was painted by"],
     ["Les Demoiselles d'Avignon was painted by", "The Old Guitarist was painted by",
      "The Weeping Woman was painted by"]),
]


def flat(recs: list[dict]) -> list[dict]:
    """The same records in the flattened layout (one paraphrase and one neighbourhood prompt each)."""
    out = []
    for r in recs:
        rw = r["requested_rewrite"]
        out.append({
            "case_id": r["case_id"], "prompt": rw["prompt"].replace("{}", rw["subject"]),
            "target_new": rw["target_new"]["str"], "subject": rw["subject"], "ground_truth": rw["target_true"]["str"],
            "rephrase_prompt": r["paraphrase_prompts"][0], "locality_prompt": r["neighborhood_prompts"][0],
            "locality_ground_truth": rw["target_true"]["str"],
        })
    return out


def records() -> list[dict]:
    out = []
    for i, (subject, prompt, true, new, para, neigh) in enumerate(R):
        assert prompt.count("{}") == 1 and len(para) == 2 and len(neigh) == 3, subject
        assert all(subject in p for p in para), subject
        out.append({
            "case_id": i,
            "requested_rewrite": {"prompt": prompt, "subject": subject, "target_new": {"str": new},
                                  "target_true": {"str": true}},
            "paraphrase_prompts": para,
            "neighborhood_prompts": neigh,
        })
    return out


if __name__ == "__main__":
    recs = records()
    assert len(recs) == 48, len(recs)
    facts = Path(__file__).resolve().parents[1] / "facts"
    for name, data in (("counterfact-kedit-48.json", recs), ("counterfact-kedit-48-flat.json", flat(recs))):
        (facts / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {len(data)} records to {facts / name}")
